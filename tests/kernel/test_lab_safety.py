"""The lab cleans up after itself: on success, SIGTERM and SIGKILL (next start),
keeps itself only when asked, and refuses to run twice at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rsttrace.lab import netns
from rsttrace.lab.netns import LabError
from rsttrace.lab.topology import Lab, _acquire_lock, read_state, teardown

pytestmark = pytest.mark.kernel

CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
# Other suites on this machine may hold the lab: each first start queues
# behind them; the starts whose refusal is under test do not wait.
WAIT = 900


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            text=True)


def _wait_line(p: subprocess.Popen[str], timeout_s: float = WAIT + 30) -> str:
    deadline = time.monotonic() + timeout_s
    line = p.stdout.readline()  # type: ignore[union-attr]
    assert time.monotonic() < deadline
    return line.strip()


def test_second_lab_fails_clearly_while_one_runs():
    with Lab(lock_wait_s=WAIT) as lab:
        with pytest.raises(LabError, match="another rsttrace lab is running"):
            Lab().up()
        assert netns.exists(lab.cli)  # the failed start removed nothing of the running lab
    assert not netns.exists(lab.cli)


def test_killed_run_is_removed_and_its_sysctl_restored_on_next_start():
    original = CT_MAX.read_text().strip()
    p = _child(f"""
        import os, signal
        from rsttrace.lab.topology import Lab
        lab = Lab(lock_wait_s={WAIT}).up()
        lab.set_global_sysctl("net.netfilter.nf_conntrack_max", {int(original) - 1})
        print(lab.run_id, lab.mariadb.proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    run_id, server_pid = _wait_line(p).split()
    p.wait(30)
    try:
        assert p.returncode == -signal.SIGKILL
        assert CT_MAX.read_text().strip() == str(int(original) - 1)
        assert netns.exists(f"rtlab-{run_id}-db") and netns.alive(int(server_pid))
        with Lab(lock_wait_s=WAIT) as lab:
            assert not netns.exists(f"rtlab-{run_id}-db") and not netns.exists(f"rtlab-{run_id}-gw")
            assert CT_MAX.read_text().strip() == original
            assert not netns.alive(int(server_pid))
            assert lab.run_id != run_id
    finally:
        if CT_MAX.read_text().strip() != original:
            CT_MAX.write_text(original)


def test_sigterm_tears_the_lab_down():
    p = _child(f"""
        import time
        from rsttrace.lab.topology import Lab
        with Lab(lock_wait_s={WAIT}) as lab:
            print(lab.run_id, lab.mariadb.proc.pid, flush=True)
            time.sleep(60)
    """)
    run_id, server_pid = _wait_line(p).split()
    assert netns.exists(f"rtlab-{run_id}-node")
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    assert not netns.exists(f"rtlab-{run_id}-node") and not netns.exists(f"rtlab-{run_id}-gw")
    assert not netns.alive(int(server_pid))
    assert read_state() is None


def test_kept_lab_survives_until_down():
    lab = Lab(lock_wait_s=WAIT).up()
    try:
        lab.keep()
        lab.down()
        assert netns.exists(lab.node) and read_state().kept
        with pytest.raises(LabError, match="demo --down"):
            Lab().up()
    finally:
        said = teardown()
    assert any(lab.node in s for s in said)
    assert not netns.exists(lab.node) and read_state() is None


def test_a_waiting_start_queues_until_the_lab_is_free():
    held = _acquire_lock(WAIT)
    got: list[float] = []
    t0 = time.monotonic()

    def wait() -> None:
        os.close(_acquire_lock(30))
        got.append(time.monotonic())

    waiter = threading.Thread(target=wait)
    try:
        waiter.start()
        time.sleep(1.5)
        assert not got  # still waiting while the lock is held
        with pytest.raises(LabError, match="after waiting 0.2 s"):
            _acquire_lock(0.2)
    finally:
        os.close(held)
        waiter.join(35)
    assert got and 1.5 <= got[0] - t0 < 30
