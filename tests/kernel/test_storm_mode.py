"""Storm mode on the real kernel (bpf/rsttrace.bpf.c storm_count): a bounded
storm of refused connects in a lab namespace crosses the rate, the kernel
counts resets per key, and every reset is still accounted for: full events
plus the counts of the reset_agg records equal the kernel's own TcpOutRsts,
in the recording, the report and the exporter. A module of its own: a storm
would fill the rings of the tracer tier's shared session."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from rsttrace.lab.netns import tcp_out_rsts

pytestmark = pytest.mark.kernel


def record(tmp_path, ns: str, *options: str) -> tuple[subprocess.Popen, object]:
    out = tmp_path / "storm.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "rsttrace", "record", "-o", str(out), "-q",
                          "--netns", ns, "--ctx-period", "0.5", *options],
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.05)
    return p, out


def tally(records: list[dict]) -> dict[str, int]:
    out = {"sent": 0, "recv": 0, "counted_sent": 0, "counted_recv": 0, "aggs": 0}
    for r in records:
        if r["kind"] == "reset":
            out[r["dir"]] += 1
        elif r["kind"] == "reset_agg":
            out["aggs"] += 1
            out["counted_" + r["dir"]] += r["count"]
    return out


def test_a_storm_above_the_rate_is_counted_and_sums_to_the_kernel(tmp_path, netns):
    from rsttrace.schema.recording import read_recording
    ns = netns.add("st")
    p, out = record(tmp_path, ns, "--storm-rate", "1000")
    before = tcp_out_rsts(ns)
    made = netns.refuse(ns, 20000, seconds=10)
    sent = tcp_out_rsts(ns) - before
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 0, p.stderr.read()
    assert made == sent > 5000
    rec = read_recording(out)
    assert not rec.truncated and rec.totals["lost"] == 0 and rec.header["storm_rate"] == 1000
    n = tally(rec.records)
    # nothing uncounted, nothing twice: both ends of every refused connect
    assert n["sent"] + n["counted_sent"] == sent
    assert n["recv"] + n["counted_recv"] == sent
    # the storm was counted, not sent: the full events are the resets before
    # the rate was crossed and a bounded sample
    assert n["aggs"] >= 2 and n["counted_sent"] > sent / 2 and n["sent"] < sent / 2
    aggs = [r for r in rec.records if r["kind"] == "reset_agg"]
    inode = netns.inode(ns)
    for a in aggs:
        assert a["netns"] == inode and a["t_first"] <= a["t"] and a["sampled"] >= 0
        assert a["family"] == 4 and a["src"] == "127.0.0.1" and a["dst"] == "127.0.0.1"
        # the service's port kept, the client's ephemeral one left out
        assert (a["sport"], a["dport"]) == (9, 0), a
        if a["dir"] == "sent":
            assert a["syn"] is True and a["has_sock"] is False and a["state"] == ""
        else:
            assert a["state"] == "SYN_SENT" and a["has_sock"] is True
    # the report weighs them: every reset once, all refused connects
    csv = tmp_path / "storm.csv"
    summary = tmp_path / "storm.summary.csv"
    subprocess.run([sys.executable, "-m", "rsttrace", "report", str(out), "-o", str(csv),
                    "--summary", str(summary)], check=True, capture_output=True)
    rows = summary.read_text().splitlines()
    assert f"total,resets,{2 * sent}," in "\n".join(rows)
    assert any(r.startswith(f"cause,no_listener,{2 * sent},") for r in rows), rows
    import pandas as pd
    frame = pd.read_csv(csv)
    assert frame["count"].sum() == 2 * sent and set(frame["cause"]) == {"no_listener"}
    assert (frame["count"] > 1).sum() == n["aggs"]


def test_below_the_rate_nothing_changes(tmp_path, netns):
    """A few hundred refused connects (fewer than the rate's share of one
    window): every reset a full event, no reset_agg."""
    from rsttrace.schema.recording import read_recording
    ns = netns.add("sl")
    p, out = record(tmp_path, ns)
    before = tcp_out_rsts(ns)
    made = netns.refuse(ns, 300, seconds=10)
    sent = tcp_out_rsts(ns) - before
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 0, p.stderr.read()
    rec = read_recording(out)
    n = tally(rec.records)
    assert made == sent == n["sent"] == n["recv"] and n["aggs"] == 0
    assert rec.header["storm_rate"] > 0   # on, by default


def test_the_exporter_counts_a_storm_exactly(netns):
    from rsttrace.exporter.server import Exporter, live_resolver
    from rsttrace.tracer.session import TraceSession
    ns = netns.add("se")
    ex = Exporter(TraceSession(ctx_period_s=0.5, netns=[netns.inode(ns)], storm_rate=1000),
                  ("127.0.0.1", 0), resolver=live_resolver)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            ex.step(0.1)
    t = threading.Thread(target=loop, daemon=True)
    ex.start()
    t.start()
    try:
        before = tcp_out_rsts(ns)
        assert netns.refuse(ns, 20000, seconds=10) > 5000
        sent = tcp_out_rsts(ns) - before

        def counted() -> dict[str, float]:
            with urllib.request.urlopen(ex.url, timeout=5) as r:
                text = r.read().decode()
            out = {"sent": 0.0, "recv": 0.0}
            for line in text.splitlines():
                if line.startswith("rsttrace_resets_total{") and f'netns="{ns}"' in line:
                    for d in out:
                        if f'direction="{d}"' in line:
                            out[d] += float(line.rsplit(" ", 1)[1])
            return out
        deadline = time.monotonic() + 20
        got = counted()
        while got != {"sent": sent, "recv": sent} and time.monotonic() < deadline:
            time.sleep(0.5)
            got = counted()
        assert got == {"sent": sent, "recv": sent}
    finally:
        stop.set()
        t.join(timeout=10)
        ex.stop()


@pytest.mark.parametrize("btf", [True, False], ids=["btf", "raw"])
def test_the_session_counts_a_storm_with_either_kind_of_tracepoint(netns, btf):
    """The storm path on BTF tracepoints (plain loads) and on raw ones
    (probe reads): the full events and the drained counts sum to the
    kernel's, per direction."""
    from rsttrace.tracer.session import TraceSession
    ns = netns.add("sb")
    s = TraceSession(netns=[netns.inode(ns)], ctx_period_s=0, btf_tracepoints=btf, storm_rate=1000).start()
    records: list[dict] = []
    try:
        assert s.program.tp_btf is btf and s.header["storm_rate"] == 1000
        before = tcp_out_rsts(ns)
        p = netns.refusing(ns, 20000, seconds=10)
        while p.poll() is None:
            records += s.poll(0.1)
        sent = tcp_out_rsts(ns) - before
        records += s.poll(0.1)
        assert s.flush_storms() >= 2
        records += s.poll(0.1)
        lost = s.lost()
    finally:
        s.stop()
    assert lost == 0
    n = tally([r for r in records if r["kind"] in ("reset", "reset_agg")])
    assert sent > 5000 and n["aggs"] >= 2
    assert n["sent"] + n["counted_sent"] == sent
    assert n["recv"] + n["counted_recv"] == sent
