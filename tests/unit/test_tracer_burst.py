"""Bursts: events held raw while they come fast, written in order later."""

import os

import numpy as np

from rsttrace.schema import catalog as cat
from rsttrace.tracer import events as ev
from rsttrace.tracer.burst import CATCHUP_EVENTS, WINDOW_S, BurstWriter
from rsttrace.schema.recording import RecordingWriter, read_recording

HEADER = {"host": "h", "kernel": "k", "plan": {}}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def batch(start: int, n: int) -> np.ndarray:
    a = np.zeros(n, dtype=ev.EVENT_DTYPE)
    a["kind"], a["dir"] = cat.EV_RESET, cat.DIR_SENT
    a["ts_ns"] = np.arange(start, start + n) * 1000
    a["sport"] = np.arange(start, start + n) % 65536
    a["kind"][::7] = cat.EV_CT_DROP
    return a


def make(tmp_path, **kw):
    clock = Clock()
    w = RecordingWriter(tmp_path / "r.jsonl", HEADER)
    dec = ev.Decoder(hz=250, mono_to_unix=100.0)
    return clock, w, dec, BurstWriter(w, dec, str(tmp_path), clock=clock, rate=1000, **kw)


def ctx(t):
    return {"kind": "ctx", "t": t, "namespaces": []}


def held_files(tmp_path):
    return [p for p in os.listdir(tmp_path) if p.startswith(".rsttrace-burst")]


def test_slow_events_are_written_at_once(tmp_path):
    clock, w, dec, b = make(tmp_path)
    for i in range(5):
        clock.t += WINDOW_S
        b.write(batch(i * 10, 10), [ctx(i)])    # 200 events/s: below the rate
        assert b.held == 0
    b.finish()
    w.close()
    rec = read_recording(tmp_path / "r.jsonl")
    assert len(rec.records) == 55 and b.deferred == 0 and not held_files(tmp_path)


def test_a_burst_is_held_then_written_in_order_with_its_context(tmp_path):
    clock, w, dec, b = make(tmp_path)
    written = [batch(0, 10)]
    clock.t += WINDOW_S
    b.write(written[0], [])                       # slow: written
    size_before = (tmp_path / "r.jsonl").stat().st_size
    n = 10
    for i in range(4):                             # 4 windows of 1,000 each: 20,000/s
        clock.t += WINDOW_S
        a = batch(n, 1000)
        n += 1000
        written.append(a)
        b.write(a, [ctx(1000.0 + i)])
    assert b.busy and b.held == 4000             # the window that shows the rate is held too
    assert (tmp_path / "r.jsonl").stat().st_size == size_before
    grown = size_before
    clock.t += WINDOW_S
    b.write(batch(n, 1), [])                      # still fast: only held
    written.append(batch(n, 1))
    assert (tmp_path / "r.jsonl").stat().st_size == grown and b.held == 4001
    clock.t += 10                                 # the rate falls: catch up
    b.write(np.zeros(0, dtype=ev.EVENT_DTYPE), [ctx(2000.0)])
    assert b.held == 0 and b.deferred == 4001
    assert 4001 * ev.EVENT_DTYPE.itemsize < b.peak_bytes < 4001 * ev.EVENT_DTYPE.itemsize + 1000
    w.close()
    rec = read_recording(tmp_path / "r.jsonl")
    events = [r for r in rec.records if r["kind"] != "ctx"]
    assert events == dec.decode_array(np.concatenate(written))
    # context records sit where they arrived, between the events around them
    kinds = ["ctx" if r["kind"] == "ctx" else "e" for r in rec.records]
    assert kinds.count("ctx") == 5 and kinds[-1] == "ctx"
    assert kinds.index("ctx") == 10 + 1000
    assert rec.totals["events"] == len(events) == 4011


def test_catch_up_is_bounded_per_poll_and_finish_writes_the_rest(tmp_path):
    clock, w, dec, b = make(tmp_path)
    clock.t += WINDOW_S
    b.write(batch(0, 10), [])
    for i in range(6):
        clock.t += WINDOW_S
        b.write(batch(10 + i * 10_000, 10_000), [])
    assert b.busy and b.held == 60_000
    clock.t += 10
    b.write(np.zeros(0, dtype=ev.EVENT_DTYPE), [])
    assert 0 < 60_000 - b.held <= CATCHUP_EVENTS + 10_000
    assert held_files(tmp_path) == []             # unlinked from the start
    left = b.held
    assert b.finish() == left and b.held == 0
    w.close()
    rec = read_recording(tmp_path / "r.jsonl")
    ts = [r["t"] for r in rec.records]
    assert len(ts) == 60_010 and ts == sorted(ts)


def test_past_the_cap_events_are_written_as_they_come(tmp_path):
    size = ev.EVENT_DTYPE.itemsize
    clock, w, dec, b = make(tmp_path, max_bytes=2500 * size)
    clock.t += WINDOW_S
    b.write(batch(0, 1000), [])                   # decides: fast
    n = 1000
    for i in range(10):
        clock.t += WINDOW_S
        b.write(batch(n, 1000), [])
        n += 1000
        assert b.held_bytes <= 2500 * size + 1000 * size
    assert b.busy and b.held <= 3500 and b.peak_bytes <= 2500 * size
    b.finish()
    w.close()
    ts = [r["t"] for r in read_recording(tmp_path / "r.jsonl").records]
    assert len(ts) == 11_000 and ts == sorted(ts)


def test_a_cap_of_zero_never_holds(tmp_path):
    clock, w, dec, b = make(tmp_path, max_bytes=0)
    for i in range(5):
        clock.t += WINDOW_S
        b.write(batch(i * 5000, 5000), [])
        assert b.held == 0
    assert b.busy and b.deferred == 0


def test_a_file_that_cannot_take_more_turns_holding_off_and_loses_nothing(tmp_path, monkeypatch):
    import errno

    from rsttrace.tracer import burst
    clock, w, dec, b = make(tmp_path)
    real, calls = os.pwrite, []

    def pwrite(fd, data, at):
        calls.append(at)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, at)
    monkeypatch.setattr(burst.os, "pwrite", pwrite)
    clock.t += WINDOW_S
    b.write(batch(0, 10), [])
    n = 10
    for i in range(6):
        clock.t += WINDOW_S
        b.write(batch(n, 1000), [ctx(100.0 + i)])   # the 2nd call's context frame fails
        n += 1000
    assert b.max_bytes == 0 and b.held == 0 and "No space left" in b.note
    b.finish()
    w.close()
    rec = read_recording(tmp_path / "r.jsonl")
    ts = [r["t"] for r in rec.records if r["kind"] != "ctx"]
    assert len(ts) == n and ts == sorted(ts)
    assert [r["t"] for r in rec.records if r["kind"] == "ctx"] == [100.0 + i for i in range(6)]
