"""What the recording readers accept: a regular file or `-` (standard
input), lines of at most 1 MiB, records that fit the layout. Anything else
is one line (a bad file) or a counted, named warning (a bad record), never a
hang, a traceback or unbounded memory. Every command that reads a
recording goes through these readers: report, live --replay, export
--replay, fix --from."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from rsttrace.schema.recording import iter_batches
from rsttrace.cli import main
from rsttrace.schema.recording import RecordingError, iter_recording, read_recording
from rsttrace.tracer.replay import ReplaySource

FIX = Path(__file__).resolve().parents[1] / "fixtures"
LINE_MAX = 1 << 20      # the readers' cap on a line
HEADER = '{"kind":"header","schema":1,"t":1700000000.0,"host":"h","kernel":"k","plan":{}}'
RESET = json.loads((FIX / "keepalive_lab.jsonl").read_text().splitlines()[3])   # a received reset


# Runs the CLI and reports its peak RSS as wait4 gives it. A child's
# ru_maxrss also holds the memory of the process it was made from, up to its
# exec (the kernel keeps the old address space's high-water mark, vfork or
# not): made from this test process, which is hundreds of MB by the time a
# whole tier has run, it would read that. So a small process in between.
_MEASURE = """
import os, resource, sys
fd, mem = int(sys.argv[1]), int(sys.argv[2])
if mem:
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
pid = os.posix_spawn(sys.executable, [sys.executable, *sys.argv[3:]], os.environ)
_, status, usage = os.wait4(pid, 0)
os.write(fd, str(usage.ru_maxrss).encode())
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def _rsttrace(args: list[str], timeout: float = 20, mem_mb: int | None = None,
              stdin: object = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """The CLI in a child process (a hang or a memory blow-up must not take
    the test run with it), with its own peak RSS in `rss_mb`."""
    r, w = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-c", _MEASURE, str(w), str((mem_mb or 0) << 20),
                                  "-m", "rsttrace", *args], stdin=stdin, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, pass_fds=(w,), start_new_session=True)
        os.close(w)
        w = -1
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)
            child.communicate()
            raise
        maxrss = os.read(r, 64)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    p = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    p.rss_mb = int(maxrss or 0) / 1024   # type: ignore[attr-defined]
    return p


def _one_line_error(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


# ---- what may be read -------------------------------------------------------

def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "rec.jsonl"
    os.mkfifo(fifo)
    for args in (["report", str(fifo)], ["export", "--replay", str(fifo), "--duration", "1"],
                 ["live", "--replay", str(fifo)]):
        _one_line_error(_rsttrace(args, timeout=20), "a FIFO", "rsttrace record")


@pytest.mark.parametrize("path,what", [("/dev/zero", "a character device"), ("/dev/null", "a character device"),
                                        ("/", "a directory")])
def test_devices_and_directories_are_refused(path, what):
    # /dev/zero used to be read as one endless line (8.6 GB of RSS in 25 s);
    # the child is limited to 1 GiB of address space so the old behaviour fails fast.
    _one_line_error(_rsttrace(["report", path], mem_mb=1024), what)
    with pytest.raises(RecordingError, match=what):
        list(iter_recording(path)[1])


def test_dash_reads_standard_input(tmp_path, capsys):
    fixture = FIX / "full_table.jsonl"
    by_path = _rsttrace(["report", str(fixture)])
    with open(fixture, "rb") as fh:
        by_stdin = _rsttrace(["report", "-"], stdin=fh)
    assert by_stdin.returncode == 0, by_stdin.stderr
    assert by_stdin.stdout == by_path.stdout and "conntrack_full" in by_stdin.stdout
    out = tmp_path / "r.csv"
    with open(fixture, "rb") as fh:
        p = _rsttrace(["report", "-", "-o", str(out)], stdin=fh)
    assert p.returncode == 0 and out.read_text().count("\n") == 3


def test_dash_refuses_a_terminal(monkeypatch):
    monkeypatch.setattr(os, "isatty", lambda fd: fd == 0)
    with pytest.raises(RecordingError, match="terminal"):
        list(iter_recording("-")[1])


# ---- bounded lines ----------------------------------------------------------

def test_a_line_over_1_mib_is_skipped_and_named(tmp_path):
    big = dict(RESET, comm="x" * (LINE_MAX + 10), t=RESET["t"] + 1)
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join([HEADER, json.dumps(RESET), json.dumps(big), json.dumps(dict(RESET, t=RESET["t"] + 2)),
                            '{"kind":"totals","events":3,"lost":0}']) + "\n")
    for reader, records in (_slow(p), _fast(p)):
        assert [r["t"] for r in records] == [RESET["t"], RESET["t"] + 2]
        assert reader.invalid == 1 and "line 3: longer than 1 MiB" in reader.warnings[0]
    # also at the end of a file that does not end with a newline, and in small blocks
    p.write_text(HEADER + "\n" + json.dumps(RESET) + "\n" + "{" * (3 * LINE_MAX))
    for reader, records in (_slow(p), _fast(p)):
        assert len(records) == 1 and reader.invalid == 1 and "line 3: longer" in reader.warnings[0]


def test_a_long_first_line_is_not_a_recording(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b"x" * (2 * LINE_MAX))
    with pytest.raises(RecordingError, match=r":1: missing header line \(longer than 1 MiB\)"):
        read_recording(p)


def test_memory_stays_bounded_on_one_huge_line(tmp_path):
    # 64 MiB on one line: the old reader held it (and its decoded copy).
    p = tmp_path / "huge.jsonl"
    with open(p, "wb") as f:
        f.write(HEADER.encode() + b"\n" + b'{"kind":"ctx","t":1,"x":"' + b"a" * (64 << 20))
    r = _rsttrace(["report", str(p)])
    assert r.returncode == 0 and "line 2: longer than 1 MiB" in r.stderr, r.stderr
    assert r.rss_mb < 200, r.rss_mb


# ---- records that do not fit the layout -----------------------------------

def _slow(p):
    reader, it = iter_recording(p)
    return reader, list(it)


def _fast(p):
    reader, it = iter_batches(p)
    return reader, [r for b in it for r in b]


BAD = [   # (line, what the warning says about it)
    ('{"kind":"reset","t":"soon","dir":"recv"}', "t: expected `float`, got `str`"),
    ('{"kind":"reset","t":NaN}', "not valid JSON"),
    ('{"kind":"reset","t":Infinity}', "not valid JSON"),
    ('{"kind":"reset","t":1e400}', "t: number out of range"),
    ('{"kind":"reset","t":-5}', "t: time out of range (expected `float` >= 0.0)"),
    ('{"kind":"reset","t":1e12}', "t: time out of range (expected `float` < 8589934592.0)"),
    ('{"kind":"reset","t":1700000009,"sport":70000}', "sport: expected `int` <= 65535"),
    ('{"kind":"reset","t":1700000009,"pid":true}', "pid: expected `int | null`, got `bool`"),
    ('{"kind":"reset","t":1700000009,"comm":["a"]}', "comm: expected `str | null`, got `array`"),
    ('{"kind":"reset","t":1700000009,"src":{"a":1}}', "src: expected `str`, got `object`"),
    ('{"kind":"reset","t":1700000009,"comm":"\\ud800"}', "not valid JSON"),
    ('{"kind":"reset","t":1700000009,"dir":"sideways"}', "dir: invalid enum value 'sideways'"),
    ('{"kind":"ctx","t":1700000009,"namespaces":[{"netns":1,"ct":{"count":"full"}}]}',
     "namespaces[0].ct[...]: expected `int`, got `str`"),
    ('{"kind":"reset","t":1700000009,"x":' + "[" * 5000 + "]" * 5000 + "}", "nested too deep"),
    ('{"kind":"reset"}', "missing required field `t`"),
    ('{"kind":"surprise","t":1700000009}', "kind: invalid value 'surprise'"),
    ('[1, 2]', "expected `object`, got `array`"),
    ('{not json', "not valid JSON"),
    (HEADER, "a second header line"),
]


@pytest.mark.parametrize("line,why", BAD, ids=[w for _, w in BAD])
def test_a_record_that_does_not_validate_is_counted_and_named(tmp_path, line, why):
    p = tmp_path / "r.jsonl"
    lines = (FIX / "keepalive_lab.jsonl").read_text().splitlines()
    p.write_text("\n".join(lines[:3] + [line] + lines[3:]) + "\n")
    good = read_recording(FIX / "keepalive_lab.jsonl").records
    for reader, records in (_slow(p), _fast(p)):
        assert records == good
        assert reader.invalid == 1 and reader.first_invalid.startswith("line 4: "), reader.warnings
        assert why in reader.warnings[-1] and "1 record did not validate" in reader.warnings[-1]


def test_bytes_that_are_not_utf8_are_a_counted_record(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(HEADER.encode() + b'\n{"kind":"reset","t":1700000009,"comm":"\xff\xfe"}\n'
                  + json.dumps(RESET).encode() + b"\n")
    for reader, records in (_slow(p), _fast(p)):
        assert len(records) == 1 and reader.invalid == 1
        assert "line 2: not valid JSON (invalid UTF-8" in reader.warnings[0]


def test_report_names_invalid_records_in_warnings_and_totals(tmp_path, capsys):
    p = tmp_path / "r.jsonl"
    lines = (FIX / "keepalive_lab.jsonl").read_text().splitlines()
    # a reset whose time is not a number: the old reader dropped it without a word
    p.write_text("\n".join(lines[:3] + [json.dumps(dict(RESET, t="7"))] * 2 + lines[3:]) + "\n")
    summ = tmp_path / "s.csv"
    assert main(["report", str(p), "--summary", str(summ)]) == 0
    cap = capsys.readouterr()
    assert "2 records did not validate and were skipped (first: line 4: t: expected `float`, got `str`)" in cap.err
    assert "2 records did not validate (first: line 4" in cap.out       # the totals of the summary
    assert "keepalive" in cap.out
    import csv
    rows = [r for r in csv.DictReader(open(summ, newline="")) if r["section"] == "total"]
    assert {"name": "invalid_records", "value": "2"}.items() <= rows[-1].items()


def test_replay_counts_invalid_records_and_ends_on_a_read_error(tmp_path):
    p = tmp_path / "r.jsonl"
    lines = (FIX / "keepalive_lab.jsonl").read_text().splitlines()
    p.write_text("\n".join(lines[:3] + ['{"kind":"reset","t":"x"}'] + lines[3:]) + "\n")
    src = ReplaySource(p)
    got = list(src)
    assert len(got) == len(read_recording(FIX / "keepalive_lab.jsonl").records)
    assert src.stats()["invalid"] == 1 and "did not validate" in src.warnings[-1]


def test_a_bad_header_is_one_line(tmp_path, capsys):
    p = tmp_path / "r.jsonl"
    p.write_text('{"kind":"header","schema":1,"netns_names":{"x":"y"}}\n')
    assert main(["report", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ":1: header: " in err and "netns_names" in err


def test_live_replay_shows_invalid_records_and_prints_them_at_the_end(tmp_path):
    import asyncio
    from datetime import timezone

    from rsttrace.analysis.classify import Classifier
    from rsttrace.tui.app import RstApp
    from rsttrace.tui.panels import StatusHeader

    p = tmp_path / "r.jsonl"
    lines = (FIX / "keepalive_lab.jsonl").read_text().splitlines()
    p.write_text("\n".join(lines[:3] + ['{"kind":"reset","t":"x"}', '{"kind":"reset","t":1,"pid":-1}']
                           + lines[3:]) + "\n")
    app = RstApp(ReplaySource(p), Classifier(), tz=timezone.utc, export_dir=tmp_path, source_label="replay")

    async def run() -> str:
        async with app.run_test(size=(120, 24)) as pilot:
            for _ in range(100):
                await pilot.pause(0.02)
                if app.state.source_done:
                    break
            await pilot.pause(0.2)
            return str(app.query_one(StatusHeader).render())
    header = asyncio.run(run())
    assert app.state.invalid == 2 and "invalid 2" in header


def test_live_replay_of_standard_input_is_refused(capsys):
    # the screen reads its keys there
    assert main(["live", "--replay", "-"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reads its keys from standard input" in err
