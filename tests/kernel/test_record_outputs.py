"""`rsttrace record`: what it may write over, the modes of what it makes,
and how it ends on a hang-up or a closed stderr (a real recorder, real
signals, a real terminal)."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import stat
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from rsttrace.schema.recording import read_recording

pytestmark = pytest.mark.kernel
RECORD = [sys.executable, "-m", "rsttrace", "record"]


def wait_started(out: Path, p: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        assert p.poll() is None, "record ended early"
        time.sleep(0.1)
    assert out.stat().st_size > 0


def complete(out: Path) -> dict:
    """The recording ended cleanly and holds every event the recorder read."""
    rec = read_recording(out)
    assert not rec.truncated and rec.totals is not None, "no totals line"
    events = sum(r["kind"] != "ctx" for r in rec.records)
    assert rec.totals["events"] == events == rec.totals["kernel_events"]
    assert rec.totals["lost"] == 0
    return rec.totals


def test_record_refuses_links_foreign_files_and_clashes_before_attaching(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "link.jsonl").symlink_to(victim)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a recording\n")
    for argv, says in (
            (["-o", str(tmp_path / "link.jsonl")], "is a symbolic link"),
            (["-o", str(notes)], f"{notes} exists and is not an rsttrace recording: "
                                 "record to another file, or add --force"),
            (["-o", str(tmp_path / "r.jsonl"), "--csv", f"{tmp_path}/./r.jsonl"], "name the same file"),
            (["-o", str(tmp_path / "fifo"), "--csv", str(tmp_path / "r.csv")], "must be a file")):
        if argv[1].endswith("/fifo"):
            os.mkfifo(argv[1])
            # a reader, so that opening the FIFO does not wait
            fd = os.open(argv[1], os.O_RDONLY | os.O_NONBLOCK)
        try:
            r = subprocess.run(RECORD + argv, capture_output=True, text=True, timeout=60)
        finally:
            if argv[1].endswith("/fifo"):
                os.close(fd)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert victim.read_text() == "precious\n" and notes.read_text() == "not a recording\n"
    assert sorted(os.listdir(tmp_path)) == ["fifo", "link.jsonl", "notes.txt", "victim"]


def test_record_force_replaces_and_makes_everything_0600(tmp_path, netns):
    ns = netns.add("f")
    out, csv = tmp_path / "notes.txt", tmp_path / "r.csv"
    out.write_text("not a recording\n")
    os.chmod(out, 0o644)
    old = os.umask(0o022)
    try:
        r = subprocess.run(RECORD + ["-o", str(out), "--force", "-q", "--netns", ns, "--duration", "1",
                                     "--csv", str(csv)], capture_output=True, text=True, timeout=60)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    complete(out)
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(csv.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "r.csv"]


def _on_a_terminal(slave: int):
    def become_its_session() -> None:
        # the pty is the recorder's controlling terminal, as an ssh session's is
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    return dict(stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                preexec_fn=become_its_session)


def test_a_hang_up_during_a_burst_ends_the_recording_cleanly(tmp_path, netns):
    """An ssh hang-up: the terminal goes (SIGHUP to the recorder, and every
    later write to it fails). The recording still gets every event read,
    including those held raw in the burst file, and its totals line."""
    ns = netns.add("h")
    out = tmp_path / "hup.jsonl"
    master, slave = pty.openpty()
    seen: list[bytes] = []

    def drain() -> None:
        try:
            while chunk := os.read(master, 4096):
                seen.append(chunk)
        except OSError:
            pass
    p = subprocess.Popen(RECORD + ["-o", str(out), "--netns", ns, "--ctx-period", "0.2",
                                   "--burst-rate", "500", "--storm-rate", "0",
                                   "--csv", str(tmp_path / "hup.csv")],
                         **_on_a_terminal(slave))
    os.close(slave)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        wait_started(out, p)
        storm = netns.refusing(ns, 200_000, seconds=8)
        time.sleep(3)                    # the storm's events are being held
        os.close(master)                 # hang up
        rc = p.wait(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    storm.wait(timeout=30)
    assert rc == 0, b"".join(seen).decode(errors="replace")
    assert b"recording to" in b"".join(seen)
    totals = complete(out)
    assert totals["burst_held"] > 0 and totals["events"] > 1000
    assert (tmp_path / "hup.csv").stat().st_size > 0     # --csv still written after it


def test_a_closed_stderr_does_not_cost_a_single_event(tmp_path, netns):
    """stderr is a pipe whose reader has gone (`record ... 2>&1 | less`, then
    q): every message fails with EPIPE. Nothing of the recording is lost."""
    ns = netns.add("p")
    out, csv = tmp_path / "pipe.jsonl", tmp_path / "pipe.csv"
    rd, wr = os.pipe()
    os.close(rd)
    try:
        p = subprocess.Popen(RECORD + ["-o", str(out), "--netns", ns, "--ctx-period", "0.2",
                                       "--burst-rate", "500", "--storm-rate", "0", "--csv", str(csv)],
                             stdout=wr, stderr=wr)
    finally:
        os.close(wr)
    try:
        wait_started(out, p)
        netns.refuse(ns, 20000, seconds=6)
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert rc == 0
    totals = complete(out)
    assert totals["burst_held"] > 0 and totals["events"] > 1000
    assert csv.stat().st_size > 0 and stat.S_IMODE(csv.stat().st_mode) == 0o600
