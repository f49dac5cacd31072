import io

import pytest

from rsttrace.cli import main


def test_not_a_terminal_needs_yes(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["--fix", "--observe", "0"]) == 2
    err = capsys.readouterr().err
    assert "not a terminal" in err and "--yes" in err and err.count("\n") == 1


def test_root_is_required(monkeypatch, capsys):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["fix", "--dry-run"]) == 2
    assert "run it with sudo" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["net.ipv4.tcp_keepalive_time", "x=abc", "=5"])
def test_bad_set_is_a_one_line_error(monkeypatch, capsys, bad):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert main(["fix", "--dry-run", "--set", bad]) == 2
    assert "KEY=INTEGER" in capsys.readouterr().err
