"""The live screen ended by a signal instead of `q`: SIGTERM (a service
manager, `kill`) and SIGHUP (an ssh session that dropped) end it like `q`,
tracing detached and `--record`'s file complete with its totals line."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.kernel

RSTTRACE = [sys.executable, "-m", "rsttrace"]


def _pump(master: int, until, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until():
        if select.select([master], [], [], 0.2)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:      # the terminal went away (hang-up)
                break
    return seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_ends_the_live_screen_with_a_complete_recording(tmp_path, sig):
    rec = tmp_path / "live.jsonl"
    master, slave = pty.openpty()
    p = subprocess.Popen(RSTTRACE + ["live", "--record", str(rec)], stdin=slave, stdout=slave,
                         stderr=slave, start_new_session=True,
                         env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"})
    os.close(slave)
    try:
        # started once the recording holds a context snapshot after its header
        seen = _pump(master, lambda: p.poll() is not None or
                     (rec.exists() and rec.read_bytes().count(b"\n") >= 2), 60)
        assert p.poll() is None, seen[-2000:]
        time.sleep(0.5)
        p.send_signal(sig)
        if sig == signal.SIGHUP:
            os.close(master)     # and the terminal is gone, as after a dropped ssh session
            master = -1
            p.wait(timeout=30)
        else:
            seen += _pump(master, lambda: p.poll() is not None, 30)
        assert p.wait(timeout=10) == 128 + sig, seen[-2000:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if master >= 0:
            os.close(master)
    lines = rec.read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "header"
    assert json.loads(lines[-1])["kind"] == "totals", lines[-1]
    assert b"Traceback" not in seen
