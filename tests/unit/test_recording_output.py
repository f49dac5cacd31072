"""Where a recording is written (`rsttrace record -o`, `live --record`, the
demo): never through a link, never over a file that is not a recording
unless forced, 0600, devices and FIFOs in place; the burst file beside it
has no name at all."""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest

from rsttrace.schema import catalog as cat
from rsttrace.tracer import events as ev
from rsttrace.tracer.burst import WINDOW_S, BurstWriter
from rsttrace.schema.recording import RecordingWriter, read_recording

HEADER = {"host": "h", "kernel": "k", "plan": {}}


def record(target, n: int = 2) -> None:
    w = RecordingWriter(target, HEADER)
    for i in range(n):
        w.write({"kind": "reset", "t": float(i), "dir": "recv"})
    w.close()


def test_a_new_recording_is_0600(tmp_path):
    old = os.umask(0o022)
    try:
        record(tmp_path / "r.jsonl")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.jsonl").st_mode) == 0o600


def test_a_link_is_refused_and_its_target_kept(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "r.jsonl").symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        record(tmp_path / "r.jsonl")
    assert victim.read_text() == "precious\n"
    # a dangling link too: O_CREAT would have made the file it names
    (tmp_path / "d.jsonl").symlink_to(tmp_path / "made")
    with pytest.raises(OSError, match="symbolic link"):
        record(tmp_path / "d.jsonl")
    assert not (tmp_path / "made").exists()


def test_a_file_that_is_not_a_recording_is_kept_unless_forced(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("not a recording\n")
    with pytest.raises(OSError, match="not an rsttrace recording"):
        record(f)
    assert f.read_text() == "not a recording\n"
    from rsttrace.schema.recording import open_output
    record(open_output(f, force=True))
    assert len(read_recording(f).records) == 2


def test_an_existing_recording_or_empty_file_is_replaced_and_made_0600(tmp_path):
    f = tmp_path / "r.jsonl"
    record(f, n=5)
    os.chmod(f, 0o644)
    record(f, n=1)
    assert len(read_recording(f).records) == 1 and stat.S_IMODE(os.stat(f).st_mode) == 0o600
    e = tmp_path / "empty"
    e.touch()
    record(e)
    assert len(read_recording(e).records) == 2


def test_nothing_is_changed_until_the_header_is_written(tmp_path):
    from rsttrace.schema.recording import open_output
    f = tmp_path / "r.jsonl"
    record(f, n=3)
    before = f.read_bytes()
    out = open_output(f)
    out.discard()       # the recorder failed to start
    assert f.read_bytes() == before
    new = open_output(tmp_path / "new.jsonl")
    new.discard()
    assert not (tmp_path / "new.jsonl").exists()


def test_dash_is_not_taken_for_a_file_named_dash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="written to a file"):
        record("-")
    assert os.listdir(tmp_path) == []


def test_a_fifo_is_written_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    record(fifo)
    reader.join(10)
    assert got[0].count(b"\n") == 4 and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_the_burst_file_has_no_name_and_mode_0600(tmp_path):
    """Held events go to an O_TMPFILE (or at once unlinked mkstemp) file:
    nothing to plant a link at, nothing left behind."""
    t = [0.0]
    w = RecordingWriter(tmp_path / "r.jsonl", HEADER)
    b = BurstWriter(w, ev.Decoder(hz=250, mono_to_unix=100.0), str(tmp_path), rate=10,
                    clock=lambda: t[0])
    a = np.zeros(100, dtype=ev.EVENT_DTYPE)
    a["kind"] = cat.EV_RESET
    for _ in range(3):
        t[0] += WINDOW_S
        b.write(a, [])
    assert b.held > 0
    st = os.fstat(b._fd)
    assert st.st_nlink == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert os.listdir(tmp_path) == ["r.jsonl"]
    b.finish()
    w.close()
