"""Where `rsttrace report` (and every other CSV writer) puts its bytes:
devices and FIFOs written in place, links refused, the recording never
overwritten, temporary files unpredictable and always removed, modes 0600,
signals and closed pipes handled (rsttrace.outfile)."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rsttrace.cli import main
from rsttrace.outfile import OutFile, OutputError, check_distinct

FIX = Path(__file__).resolve().parents[1] / "fixtures"
REC = FIX / "keepalive_lab.jsonl"
RSTTRACE = [sys.executable, "-m", "rsttrace"]
root = pytest.mark.skipif(os.geteuid() != 0, reason="making device nodes needs root")


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def entries(d: Path) -> set[str]:
    return set(os.listdir(d))


def expected_csv(tmp_path: Path, rec: Path = REC) -> bytes:
    ref = tmp_path / "ref" / "r.csv"
    ref.parent.mkdir()
    assert main(["report", str(rec), "-o", str(ref)]) == 0
    return ref.read_bytes()


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def bench_recording(path: Path, resets: int) -> Path:
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bench_report", Path(__file__).resolve().parents[2] / "bench" / "bench_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.generate(path, resets)
    return path


# -- item: outputs that are not regular files ---------------------------------

@root
@pytest.mark.parametrize("opt", ["-o", "--summary"])
def test_a_character_device_is_written_in_place(tmp_path, opt):
    """`-o /dev/null` as root replaced /dev/null with a regular file. A node
    of the same device made here, so that a regression cannot damage the
    host's own /dev/null."""
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert main(["report", str(REC), opt, str(null)]) == 0
    st = os.lstat(null)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert entries(tmp_path) == {"null"}


@root
def test_a_full_device_gives_one_line_naming_it(tmp_path, capsys):
    full = tmp_path / "full"
    os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    assert main(["report", str(REC), "-o", str(full)]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"cannot write {full}: No space left on device" in err
    assert stat.S_ISCHR(os.lstat(full).st_mode) and entries(tmp_path) == {"full"}


def test_a_fifo_is_written_in_place(tmp_path):
    want = expected_csv(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    try:
        assert main(["report", str(REC), "-o", str(fifo)]) == 0
    finally:
        reader.join(10)
    assert got == [want]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and entries(tmp_path) == {"pipe", "ref"}


def test_dash_is_standard_output(tmp_path, capfd, monkeypatch):
    want = expected_csv(tmp_path)
    capfd.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(REC), "-o", "-"]) == 0
    out, err = capfd.readouterr()
    assert out.encode() == want and "resets -> standard output" in err
    assert entries(tmp_path) == {"ref"}


def test_a_link_is_refused_and_what_it_points_to_kept(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "r.csv"
    link.symlink_to(victim)
    assert main(["report", str(REC), "-o", str(link)]) == 2
    assert "is a symbolic link" in one_line(capsys.readouterr().err)
    assert os.path.islink(link) and victim.read_text() == "precious\n"
    assert entries(tmp_path) == {"victim", "r.csv"}


def test_a_directory_is_refused(tmp_path, capsys):
    assert main(["report", str(REC), "-o", str(tmp_path)]) == 2
    assert "is a directory" in one_line(capsys.readouterr().err)


# -- item: an output that is the input, or two outputs that are one ----------

@pytest.mark.parametrize("how", ["same", "spelled", "hardlink"])
def test_the_recording_is_never_an_output(tmp_path, capsys, how, monkeypatch):
    rec = tmp_path / "in.jsonl"
    rec.write_bytes(REC.read_bytes())
    out = {"same": str(rec), "spelled": f"{tmp_path}/./in.jsonl", "hardlink": str(tmp_path / "h")}[how]
    if how == "hardlink":
        os.link(rec, out)
    for opt in ("-o", "--summary"):
        assert main(["report", str(rec), opt, out]) == 2
        assert "is the recording itself" in one_line(capsys.readouterr().err)
    assert rec.read_bytes() == REC.read_bytes()


def test_summary_and_csv_must_differ(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old.csv").write_text("old\n")
    for o, s in (("r.csv", "./r.csv"), ("old.csv", str(tmp_path / "old.csv"))):
        assert main(["report", str(REC), "-o", o, "--summary", s]) == 2
        assert "name the same file" in one_line(capsys.readouterr().err)
    assert entries(tmp_path) == {"old.csv"} and (tmp_path / "old.csv").read_text() == "old\n"


# -- item: temporary files ------------------------------------------------------

@pytest.mark.parametrize("opt", ["-o", "--summary"])
def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path, opt):
    """The temporary name was `.{name}.{pid}.tmp`, opened with open(): a
    link planted there made root write the CSV wherever it pointed."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / f".r.csv.{os.getpid()}.tmp").symlink_to(victim)
    assert main(["report", str(REC), opt, str(tmp_path / "r.csv")]) == 0
    assert victim.read_text() == "precious\n"
    out = tmp_path / "r.csv"
    assert stat.S_ISREG(os.lstat(out).st_mode) and out.read_text().startswith(("time,", "section,"))


def test_temporary_names_are_unpredictable_and_exclusive(tmp_path):
    seen = set()
    for _ in range(20):
        out = OutFile(tmp_path / "r.csv")
        (tmp,) = entries(tmp_path) - {"r.csv"}
        assert tmp.startswith(".r.csv.") and tmp not in seen and mode(tmp_path / tmp) == 0o600
        seen.add(tmp)
        out.abort()
    assert entries(tmp_path) == set()


def test_an_interrupted_report_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    out.write_text("old\n")
    from rsttrace.analysis import classify

    def interrupted(self, batch):
        raise KeyboardInterrupt
    monkeypatch.setattr(classify.Classifier, "feed_many", interrupted)
    assert main(["report", str(REC), "-o", str(out), "--summary", str(tmp_path / "s.csv")]) == 130
    assert out.read_text() == "old\n" and entries(tmp_path) == {"r.csv"}


@root
def test_a_full_disk_names_the_users_path(tmp_path):
    """On a tmpfs too small for the CSV (in a mount namespace of its own),
    the error names the path given, not the temporary file (or None), and
    nothing is left behind."""
    rec = bench_recording(tmp_path / "big.jsonl", 3000)
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=64k rsttrace-test {small} && "
              f"{sys.executable} -m rsttrace report {rec} -o {small}/r.csv; echo rc=$?; ls -A {small}")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert r.stdout.splitlines() == ["rc=2"], r.stdout + r.stderr
    assert one_line(r.stderr) == f"rsttrace: cannot write {small}/r.csv: No space left on device\n"


# -- item: modes ------------------------------------------------------------------

def test_reports_and_summaries_are_created_0600(tmp_path):
    old = os.umask(0o022)
    try:
        r, s = tmp_path / "r.csv", tmp_path / "s.csv"
        s.write_text("an older summary, 0644\n")
        os.chmod(s, 0o644)
        assert main(["report", str(REC), "-o", str(r), "--summary", str(s)]) == 0
    finally:
        os.umask(old)
    assert mode(r) == mode(s) == 0o600


# -- item: times out of range --------------------------------------------------

@pytest.mark.parametrize("argv", [["--since", "1e30"], ["--until=-1e300"], ["--since", "nan"],
                                  ["--until", "inf"], ["--since", "1500-01-01"]])
def test_a_time_out_of_range_is_said_so(argv, capsys):
    assert main(["report", str(REC), *argv]) == 2
    assert "time out of range" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("t", [1e14, 1e17, 1e30, -5.0])
@pytest.mark.parametrize("opt", [[], ["-o"], ["--summary"]])
def test_a_recorded_time_out_of_range_is_said_so(tmp_path, capsys, t, opt):
    """A recorded time no report can show is refused where the recording is
    read (like any record that does not validate): counted, named with its
    line and "time out of range", never "cannot write None" or a traceback."""
    lines = [json.loads(x) for x in REC.read_text().splitlines()]
    for r in lines:
        if r["kind"] == "reset":
            r["t"] = t
    rec = tmp_path / "odd.jsonl"
    rec.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = [str(tmp_path / "r.csv")] if opt else []
    assert main(["report", str(rec), *opt, *out]) == 0
    err = capsys.readouterr().err
    assert "did not validate" in err and "t: time out of range" in err and "None" not in err
    assert "Traceback" not in err


# -- item: every path warns about a recording that did not end -----------------

@pytest.mark.parametrize("opt", [[], ["-o"], ["--summary"]])
def test_a_recording_without_totals_is_warned_about(tmp_path, capsys, opt):
    rec = tmp_path / "cut.jsonl"
    rec.write_text("".join(x + "\n" for x in REC.read_text().splitlines()
                           if json.loads(x)["kind"] != "totals"))
    out = [str(tmp_path / "r.csv")] if opt else []
    assert main(["report", str(rec), *opt, *out]) == 0
    assert "no totals line" in capsys.readouterr().err


# -- item: standard output and signals, in a real process ----------------------

def test_a_full_stdout_ends_with_one_line():
    with open("/dev/full", "w") as full:
        r = subprocess.run(RSTTRACE + ["report", str(REC)], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=60)
    assert r.returncode == 2
    assert one_line(r.stderr) == "rsttrace: cannot write standard output: No space left on device\n"


@pytest.mark.parametrize("argv", [[], ["-o", "-"]])
def test_a_closed_stdout_pipe_ends_quietly(tmp_path, argv):
    """`rsttrace report F | head`: the reader is gone before the output."""
    rec = bench_recording(tmp_path / "big.jsonl", 3000) if argv else REC
    rd, wr = os.pipe()
    os.close(rd)
    try:
        r = subprocess.run(RSTTRACE + ["report", str(rec), *argv], stdout=wr, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(wr)
    assert r.returncode == 128 + signal.SIGPIPE and r.stderr == ""
    assert entries(tmp_path) <= {"big.jsonl"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_report_removes_the_temporary_file(tmp_path, sig):
    rec = bench_recording(tmp_path / "big.jsonl", 200_000)
    out = tmp_path / "r.csv"
    out.write_text("old\n")
    p = subprocess.Popen(RSTTRACE + ["report", str(rec), "-o", str(out)], stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (entries(tmp_path) - {"big.jsonl", "r.csv"}):
        time.sleep(0.01)
    assert entries(tmp_path) - {"big.jsonl", "r.csv"}, "no temporary file seen"
    time.sleep(0.3)
    p.send_signal(sig)
    assert p.wait(timeout=60) == 128 + sig, p.stderr.read()
    assert "Traceback" not in p.stderr.read()
    assert entries(tmp_path) == {"big.jsonl", "r.csv"} and out.read_text() == "old\n"


# -- the mechanism itself ---------------------------------------------------------

def test_outfile_commit_and_abort(tmp_path):
    p = tmp_path / "x"
    p.write_text("old")
    with OutFile(p) as out:
        out.write("new")
        assert p.read_text() == "old"
    assert p.read_text() == "new" and entries(tmp_path) == {"x"}
    with pytest.raises(RuntimeError):
        with OutFile(p) as out:
            out.write("half")
            raise RuntimeError
    assert p.read_text() == "new" and entries(tmp_path) == {"x"}


def test_outfile_over_links_replaces_the_link_itself(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "conf"
    link.symlink_to(victim)
    with OutFile(link, mode=0o644, over_links=True) as out:
        out.write("mine")
    assert not link.is_symlink() and link.read_text() == "mine" and mode(link) == 0o644
    assert victim.read_text() == "precious"


def test_check_distinct_spots_the_same_file_by_inode(tmp_path):
    a = tmp_path / "a"
    a.write_text("x")
    os.link(a, tmp_path / "b")
    with pytest.raises(OutputError, match="is in itself"):
        check_distinct([("in", a)], [("-o", tmp_path / "b")])
    with pytest.raises(OutputError, match="same file"):
        check_distinct([], [("-o", tmp_path / "new"), ("--summary", f"{tmp_path}/../{tmp_path.name}/new")])
    check_distinct([("in", a)], [("-o", tmp_path / "c"), ("--summary", None)])


def test_write_errors_are_named_and_epipe_is_told_apart(tmp_path):
    from rsttrace.outfile import OutputClosed, write_error
    assert isinstance(write_error("x", OSError(errno.EPIPE, "Broken pipe")), OutputClosed)
    e = write_error("r.csv", OSError(errno.ENOSPC, "No space left on device"))
    assert str(e) == "cannot write r.csv: No space left on device"
