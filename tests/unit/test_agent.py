"""The agent's parts without the kernel: the flight recorder's rotation,
caps and files; the log's lines, rate limit and a stdout that does not
move; the command line's checks (one line each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from rsttrace.analysis.classify import Classifier
from rsttrace.exporter.flight import FlightRecorder, Limits, RecordDirError, prepare_dir, recordings
from rsttrace.exporter.verdictlog import LineWriter, VerdictLog, verdict_record
from rsttrace.schema import catalog as cat
from rsttrace.schema.recording import read_recording
from rsttrace.tracer import events as ev
from test_tracer_burst import batch      # raw events: resets, every seventh a drop

HEADER = {"kind": "header", "schema": 1, "host": "h", "kernel": "k", "plan": {}, "node": "worker-1",
          "t": 1_700_000_000.0, "monotonic": 1000.0, "boot_id": "b"}
MB = 1 << 20


class Clock:
    # now by default: the age cap compares it with the files' real mtimes
    def __init__(self, t: float | None = None):
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t


def ctx(t: float) -> dict:
    return {"kind": "ctx", "t": t, "namespaces": [{"netns": 1, "name": "init"}]}


def recorder(tmp_path, clock, stats=None, **limits):
    lim = Limits(**{"max_bytes": 10 * MB, "max_age_s": 3600.0, "file_bytes": MB, "file_s": 60.0,
                    **limits})
    errors: list[str] = []
    return FlightRecorder(prepare_dir(tmp_path / "rec"), HEADER, ev.Decoder(hz=250, mono_to_unix=0.0),
                          lim, stats=stats, on_error=errors.append, clock=clock), errors


def test_files_rotate_by_period_each_complete_with_the_newest_context(tmp_path):
    clock = Clock()
    t0 = clock.t
    st = {"events": 0, "lost": 0, "rescued": 0}
    fr, errors = recorder(tmp_path, clock, stats=lambda: dict(st), file_s=10.0)
    for i in range(5):
        st["events"] += 100
        st["lost"] += 1
        fr.write(batch(i * 100, 100), [ctx(clock.t)])
        clock.t += 6.0
    fr.close()
    files = recordings(tmp_path / "rec")
    assert len(files) == 3 and not errors
    events = lost = 0
    for n, (path, _size, _mtime) in enumerate(files):
        rec = read_recording(path)
        assert rec.totals is not None and not rec.warnings
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert rec.records[0]["kind"] == "ctx"     # explains its first resets on its own
        got = sum(1 for r in rec.records if r["kind"] != "ctx")
        events += got
        assert rec.totals["events"] == got
        assert rec.totals["kernel_events"] == got
        lost += rec.totals["lost"]
        assert rec.header["t"] == pytest.approx(t0 + 12.0 * n)
        # every file says the session's one conversion of its monotonic clock
        assert rec.header["t"] - rec.header["monotonic"] == pytest.approx(HEADER["t"] - HEADER["monotonic"])
        assert rec.header["node"] == HEADER["node"]
    assert events == 500
    assert lost == 4     # counted from the first file on


def test_each_file_counts_the_events_it_holds_when_they_were_read_long_before(tmp_path):
    """Behind a backlog the kernel's events are read well before they are
    written: each file's kernel_events is what it holds, never the reader's
    count while it was open (that went negative, which a recording's reader
    refuses)."""
    clock = Clock()
    st = {"events": 500, "lost": 0, "rescued": 0}     # all read at once, into the backlog
    fr, errors = recorder(tmp_path, clock, stats=lambda: dict(st), file_s=10.0)
    for i in range(5):
        fr.write(batch(i * 100, 100), [])
        clock.t += 6.0
    fr.close()
    files = recordings(tmp_path / "rec")
    assert len(files) == 3 and not errors
    for path, _size, _mtime in files:
        rec = read_recording(path)
        assert not rec.warnings and rec.totals is not None
        held = sum(r["kind"] != "ctx" for r in rec.records)
        assert rec.totals["kernel_events"] == held


def test_files_rotate_by_size(tmp_path):
    clock = Clock()
    fr, _ = recorder(tmp_path, clock, file_bytes=MB, max_bytes=64 * MB)
    for i in range(30):
        fr.write(batch(i * 1000, 1000), [])
    fr.close()
    files = recordings(tmp_path / "rec")
    assert len(files) > 3
    for path, size, _ in files[:-1]:
        assert MB <= size < 2 * MB
    assert sum(len([r for r in read_recording(p).records if r["kind"] != "ctx"])
               for p, _, _ in files) == 30_000


def test_total_size_is_capped_oldest_removed_first(tmp_path):
    clock = Clock()
    fr, _ = recorder(tmp_path, clock, file_bytes=MB, max_bytes=4 * MB)
    first = None
    for i in range(60):
        fr.write(batch(i * 1000, 1000), [])
        first = first or fr.path
        clock.t += 1.0
        total = sum(size for _, size, _ in recordings(tmp_path / "rec"))
        assert total <= 4 * MB + MB // 2    # one poll's worth past a file's size at most
    fr.close()
    assert not first.exists() and fr.removed > 0


def test_old_files_are_removed_and_only_the_recorders_own(tmp_path):
    clock = Clock()
    d = tmp_path / "rec"
    d.mkdir(mode=0o700)
    old = d / "rsttrace-20200101T000000Z.jsonl"
    old.write_text("{}\n")
    os.utime(old, (0, clock.t - 7200))
    other = d / "notes.jsonl"
    other.write_text("{}\n")
    os.utime(other, (0, clock.t - 7200))
    link = d / "rsttrace-20200101T000001Z.jsonl"
    link.symlink_to(other)
    fr, _ = recorder(tmp_path, clock, max_age_s=3600.0)
    fr.write(batch(0, 10), [])
    fr.close()
    assert not old.exists()
    assert other.exists() and link.is_symlink()     # never a file it did not make


def test_two_files_in_one_second_do_not_clobber(tmp_path):
    clock = Clock()
    fr, _ = recorder(tmp_path, clock, file_s=0.5)
    for i in range(3):
        fr.write(batch(i, 1), [])
        clock.t += 0.6
    fr.close()
    names = [p.name for p, _, _ in recordings(tmp_path / "rec")]
    assert len(names) == 3 and len(set(names)) == 3


def test_a_write_that_fails_is_said_once_and_retried_later(tmp_path, monkeypatch):
    clock = Clock()
    fr, errors = recorder(tmp_path, clock)
    fr.write(batch(0, 10), [])
    real = fr.decoder.encode_jsonl

    def full(arr):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fr.decoder, "encode_jsonl", full)
    fr.write(batch(10, 10), [])
    fr.write(batch(20, 10), [])          # no new file yet, no second message
    assert len(errors) == 1 and "No space left" in errors[0] and fr.path is None
    monkeypatch.setattr(fr.decoder, "encode_jsonl", real)
    clock.t += 61
    fr.write(batch(30, 10), [])
    fr.close()
    files = recordings(tmp_path / "rec")
    assert len(files) == 2
    first = read_recording(files[0][0])
    assert first.totals is not None and "No space left" in first.totals["note"]


@pytest.mark.parametrize("make,words", [
    (lambda p: (p.mkdir(), p.chmod(0o777)), "writable by others"),
    (lambda p: p.write_text("x"), "not a directory"),
    (lambda p: (p.parent.joinpath("real").mkdir(), p.symlink_to(p.parent / "real")), "symbolic link"),
])
def test_a_directory_others_could_plant_links_in_is_refused(tmp_path, make, words):
    p = tmp_path / "rec"
    make(p)
    with pytest.raises(RecordDirError, match=words):
        prepare_dir(p)


def test_a_missing_directory_is_created_0700(tmp_path):
    p = prepare_dir(tmp_path / "a" / "rec")
    assert oct(p.stat().st_mode & 0o777) == "0o700"


# ---- the log ---------------------------------------------------------------

def verdicts(n: int, t0: float = 100.0, ns_name: str = "pod-a"):
    clf = Classifier()
    recs = []
    for i in range(n):
        common = {"kind": "reset", "t": t0 + i * 1e-3, "family": 4, "src": "10.0.0.1", "sport": 9,
                  "dst": "10.0.0.2", "dport": 40000 + i}
        recs.append({**common, "dir": "sent", "netns": 7, "has_sock": False, "syn": True,
                     "reason": "NO_SOCKET"})
        recs.append({**common, "dir": "recv", "netns": 7, "state": "SYN_SENT", "pid": 42,
                     "comm": "cli", "pod": "default/web-1"})
    out = clf.feed_many(recs) + clf.flush()
    assert len(out) == n
    return out


class Pipe:
    def __init__(self):
        self.r, self.w = os.pipe()

    def read_all(self) -> list[dict]:
        os.close(self.w)
        data = b""
        while chunk := os.read(self.r, 1 << 16):
            data += chunk
        os.close(self.r)
        return [json.loads(line) for line in data.decode("ascii").splitlines()]


def test_one_line_per_verdict_with_cause_evidence_flow_and_namespaces():
    pipe = Pipe()
    log = VerdictLog(LineWriter(pipe.w, node="n1"), "n1", {7: "pod-a"}.get, rate=0)
    log(verdicts(3))
    log.close()
    lines = pipe.read_all()
    assert len(lines) == 3
    r = lines[0]
    assert r["kind"] == "reset" and r["node"] == "n1" and r["cause"] == "no_listener"
    assert r["confidence"] == "high" and "nothing listens" in r["evidence"]
    assert r["flow"] == {"src": "10.0.0.1", "sport": 9, "dst": "10.0.0.2", "dport": 40000}
    assert r["sent"]["netns_name"] == "pod-a" and r["sent"]["reason"] == "NO_SOCKET"
    assert r["received"]["pod"] == "default/web-1" and r["received"]["state"] == "SYN_SENT"
    assert r["time"] == "1970-01-01T00:01:40.000000Z" and r["resets"] == 2


def test_past_the_rate_resets_are_counted_by_cause_in_one_line_a_second():
    pipe = Pipe()
    clock = Clock(0.0)
    log = VerdictLog(LineWriter(pipe.w, node="n1"), "n1", lambda ns: None, rate=10, clock=clock)
    log(verdicts(25))
    clock.t += 1.0
    log(verdicts(4))
    log.close()
    lines = pipe.read_all()
    resets = [r for r in lines if r["kind"] == "reset"]
    summary = [r for r in lines if r["kind"] == "resets_not_logged"]
    assert len(resets) == 14
    assert len(summary) == 1 and summary[0]["resets"] == 15
    assert summary[0]["by_cause"] == {"no_listener": 15}
    assert log.lines + log.not_logged == 29


def test_a_stdout_that_does_not_move_drops_lines_and_never_blocks():
    r, w = os.pipe()
    os.set_blocking(r, True)
    writer = LineWriter(w, max_bytes=64 << 10, node="n1")
    log = VerdictLog(writer, "n1", lambda ns: None, rate=0)
    t0 = time.monotonic()
    for _ in range(20):
        log(verdicts(100))           # far more than the pipe and the buffer hold
    assert time.monotonic() - t0 < 5.0
    assert writer.dropped > 0
    # the reader comes back: what was kept arrives, then a line counting the rest
    got = b""
    done = threading.Event()

    def drain():
        nonlocal got
        while chunk := os.read(r, 1 << 16):
            got += chunk
        done.set()
    threading.Thread(target=drain, daemon=True).start()
    log.close()
    os.close(w)
    assert done.wait(10)
    lines = [json.loads(x) for x in got.decode().splitlines()]
    dropped = [x for x in lines if x["kind"] == "log_lines_dropped"]
    assert sum(x["lines"] for x in dropped) == writer.dropped
    assert len([x for x in lines if x["kind"] == "reset"]) + writer.dropped == 2000
    os.close(r)


def test_a_name_that_is_not_utf8_is_escaped_not_fatal():
    pipe = Pipe()
    bad = b"pod-\xff".decode("utf-8", "surrogateescape")
    log = VerdictLog(LineWriter(pipe.w, node="n1"), "n1", {7: bad}.get, rate=0)
    log(verdicts(1))
    log.close()
    assert pipe.read_all()[0]["sent"]["netns_name"] == bad


def test_a_closed_stdout_stops_the_log_not_the_caller():
    r, w = os.pipe()
    os.close(r)
    writer = LineWriter(w, node="n1")
    log = VerdictLog(writer, "n1", lambda ns: None, rate=0)
    log(verdicts(5))
    log.close()
    log(verdicts(5))
    assert writer.broken and writer.dropped == 10
    os.close(w)


def test_verdict_record_is_plain_json():
    v = verdicts(1)[0]
    json.dumps(verdict_record(v, "n", lambda ns: None))


# ---- the command line -----------------------------------------------------

def run_agent(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "rsttrace", "agent", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,words", [
    (["--listen", "nowhere:1"], "ADDR:PORT"),
    (["--record-max-age", "6x"], "--record-max-age"),
    (["--rotate-every", "0"], "--rotate-every"),
    (["--record-max-mb", "10", "--rotate-mb", "8"], "at most half"),
    (["--record-max-mb", "-1"], "--record-max-mb"),
    (["--log-rate", "-5"], "--log-rate"),
    (["--node", " "], "--node"),
    (["--netns-cap", "0"], "--netns-cap"),
])
def test_bad_input_is_one_clear_line(args, words, tmp_path):
    p = run_agent("--record-dir", str(tmp_path / "rec"), *args)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsttrace: ") and words in lines[0], p.stderr


def test_a_record_dir_others_may_write_is_one_line(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    p = run_agent("--record-dir", str(d))
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "writable by others" in p.stderr and "chmod go-w" in p.stderr
    assert p.stdout == ""


def test_the_cli_parses_durations():
    from rsttrace.commands.agent import parse_duration
    assert [parse_duration(x, "-") for x in ("90", "90s", "30m", "6h", "2d", "1.5h")] == \
        [90, 90, 1800, 21600, 172800, 5400]
