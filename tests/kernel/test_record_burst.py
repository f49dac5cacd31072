"""`rsttrace record` holding a burst of resets raw (tracer/burst.py), in a
module of its own: the storm would fill the rings of the tracer tier's
shared session, which nobody drains meanwhile."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from rsttrace.lab.netns import tcp_out_rsts

pytestmark = pytest.mark.kernel


def test_record_holds_a_burst_raw_and_writes_every_event(tmp_path, netns):
    """Events held raw while they come fast are all written, in time order,
    with the context records that came meanwhile, when the recording ends."""
    from rsttrace.schema.recording import read_recording
    ns = netns.add("b")
    out = tmp_path / "burst.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "rsttrace", "record", "-o", str(out), "-q",
                          "--netns", ns, "--ctx-period", "0.2", "--burst-rate", "500",
                          "--storm-rate", "0"],
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.1)
    before = tcp_out_rsts(ns)
    made = netns.refuse(ns, 20000, seconds=10)
    sent = tcp_out_rsts(ns) - before
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 0, p.stderr.read()
    assert made == sent > 1000
    rec = read_recording(out)
    assert not rec.truncated and rec.totals["lost"] == 0
    assert 0 < rec.totals["burst_held"] <= 2 * sent and rec.totals["burst_peak_mb"] > 0
    resets = [r for r in rec.records if r["kind"] == "reset"]
    assert sum(r["dir"] == "sent" for r in resets) == sent
    assert sum(r["dir"] == "recv" for r in resets) == sent
    assert [r["t"] for r in resets] == sorted(r["t"] for r in resets)
    kinds = [r["kind"] for r in rec.records]
    first, last = kinds.index("reset"), len(kinds) - 1 - kinds[::-1].index("reset")
    assert "ctx" in kinds[first:last]   # context sampled during the burst sits among its events
    assert not [f for f in tmp_path.iterdir() if f.name != "burst.jsonl"]
