"""`rsttrace record` around one lab scenario, then `rsttrace report` to CSV:
the public entry points the end-to-end tests drive."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rsttrace.lab.scenarios import ScenarioRun, run_scenario
from rsttrace.lab.topology import Lab

RSTTRACE = [sys.executable, "-m", "rsttrace"]


@pytest.fixture(scope="module")
def lab():
    """The namespace lab, for a test module (import it there)."""
    subprocess.run(["sh", "-c", "mountpoint -q /sys/kernel/tracing || "
                    "mount -t tracefs nodev /sys/kernel/tracing"], check=False)
    # Other suites on this machine may hold the lab: queue behind them.
    with Lab(lock_wait_s=900) as lab:
        yield lab


def record_scenario(lab: Lab, name: str, tmp: Path, tag: str | None = None
                    ) -> tuple[ScenarioRun, list[dict], Path]:
    """Returns the scenario's run, the report's CSV rows and the recording."""
    tag = tag or name
    rec = tmp / f"{tag}.jsonl"
    cmd = RSTTRACE + ["record", "-o", str(rec), "--ctx-period", "0.5", "-q"]
    for ns in (lab.cli, lab.node, lab.db):
        cmd += ["--netns", ns]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        # The header is written once BPF is attached and the first snapshot taken.
        while time.monotonic() < deadline and p.poll() is None:
            if rec.exists() and rec.read_text().count("\n") >= 2:
                break
            time.sleep(0.1)
        assert p.poll() is None, p.communicate()[1]
        run = run_scenario(lab, name)
        time.sleep(1.5)  # the classifier's pairing window and one more snapshot
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    out = tmp / f"{tag}.csv"
    r = subprocess.run(RSTTRACE + ["report", str(rec), "-o", str(out)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    return run, rows, rec
