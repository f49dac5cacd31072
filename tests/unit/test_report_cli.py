"""`rsttrace report` end to end through the CLI entry point."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from rsttrace.cli import main

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def test_terminal_summary(capsys):
    assert main(["report", str(FIX / "full_table.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "resets per cause" in out and "conntrack_full" in out and "no_listener" in out
    assert "\x1b" not in out


def test_csv_and_summary_files(tmp_path, capsys):
    out, summ = tmp_path / "r.csv", tmp_path / "s.csv"
    assert main(["report", str(FIX / "ipvs_mismatch_truncated.jsonl"), "-o", str(out), "--summary", str(summ)]) == 0
    err = capsys.readouterr().err
    assert "cut off" in err
    rows = list(csv.DictReader(open(out, newline="")))
    assert [r["cause"] for r in rows] == ["timeout_mismatch", "timeout_mismatch", "peer_reset"]
    assert "nf_conntrack_tcp_timeout_established=900" in rows[0]["fix"]
    srows = list(csv.DictReader(open(summ, newline="")))
    assert {"cause", "finding", "fix"} <= {r["section"] for r in srows}


def test_filters(tmp_path):
    out = tmp_path / "r.csv"
    assert main(["report", str(FIX / "full_table.jsonl"), "-o", str(out), "--cause", "no_listener"]) == 0
    assert [r["cause"] for r in csv.DictReader(open(out, newline=""))] == ["no_listener"]
    assert main(["report", str(FIX / "full_table.jsonl"), "-o", str(out), "--until", "2023-11-14T22:13:23Z"]) == 0
    assert [r["cause"] for r in csv.DictReader(open(out, newline=""))] == ["conntrack_full"]


@pytest.mark.parametrize("argv,msg", [
    (["--cause", "nope"], "use one of"),
    (["--since", "yesterday-ish"], "ISO 8601"),
    (["--idle-timeout", "nlb"], "NAME=SECONDS"),
    (["--since", "200", "--until", "100"], "swap"),
])
def test_bad_arguments(argv, msg, capsys):
    assert main(["report", str(FIX / "keepalive_lab.jsonl"), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_bad_recordings(tmp_path, capsys):
    nohead = tmp_path / "x.jsonl"
    nohead.write_text('{"kind":"reset","t":1}\n')
    assert main(["report", str(nohead)]) == 2
    assert "missing header" in capsys.readouterr().err
    schema = tmp_path / "y.jsonl"
    schema.write_text('{"kind":"header","schema":99}\n')
    assert main(["report", str(schema)]) == 2
    assert "schema" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2


def _recording(path: Path, records: list[dict]) -> Path:
    import json
    head = {"kind": "header", "schema": 1, "t": records[0]["t"], "netns_names": {"4026532300": "cli"}}
    path.write_text("\n".join(json.dumps(r) for r in [head, *records]) + "\n")
    return path


def test_one_value_per_setting_in_the_summary(tmp_path, capsys):
    """The node's timeout was 2 s for one incident and 6 s for another:
    one tcp_keepalive_time for the client namespace (1 s, satisfying
    both), listing what it covers; before, 1 and 3 were both recommended."""
    from test_analysis_classify import ctx, lb, ns, recv, sent
    rec = _recording(tmp_path / "two.jsonl", [
        ctx(0, lb(est=2), ns(4026532300, "cli")), sent(6), recv(6.001, idle_ms=4000),
        ctx(20, lb(est=6), ns(4026532300, "cli")), sent(26, dport=40001), recv(26.001, idle_ms=8000, dport=40001),
        ctx(30, lb(est=6), ns(4026532300, "cli"))])
    assert main(["report", str(rec)]) == 0
    out = capsys.readouterr().out
    fixes = out[out.index("\nfixes\n"):]
    assert fixes.count("net.ipv4.tcp_keepalive_time 7200 -> ") == 1, fixes
    assert "net.ipv4.tcp_keepalive_time 7200 -> 1" in fixes
    assert "conntrack established timeout 2 s" in fixes and "conntrack established timeout 6 s" in fixes


def test_report_looks_ahead_for_an_idle_timeout_beyond_the_node(tmp_path):
    """Three resets from one remote after long idles: every one of them is
    `keepalive` in the report, the first two included (the live screen
    names only the third: it cannot look ahead)."""
    from test_analysis_inference import series
    rec = _recording(tmp_path / "nlb.jsonl", series([400, 420, 380]))
    out = tmp_path / "r.csv"
    assert main(["report", str(rec), "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out, newline="")))
    assert [r["cause"] for r in rows] == ["keepalive"] * 3
    assert all("an idle timeout of at most 380 s on the path to 10.20.0.5:3306" in r["evidence"] for r in rows)
