"""Reset-storm benchmark: the workload's reset rate untraced vs traced by
`rsttrace record`, in the same run, plus loss, consumer CPU, peak RSS and
time to attach.

    sudo .venv/bin/python bench/bench_storm.py [--seconds 3] [--rounds 3] [--floor]

The storm (bench/storm.c, compiled here) runs in a throwaway network
namespace, connecting to a closed loopback port: every attempt is answered
by a reset that never leaves the namespace. Rounds alternate untraced and
traced so drift on a shared machine hits both alike. The kernel's own count
of resets sent (TcpOutRsts in the namespace's /proc/net/snmp) is the truth
the recording is compared with.

--floor adds two storms per round that bound what any tracer built on these
hooks could cost: the same programs attached but returning at once
(BENCH_RETURN_EARLY: what running attached programs costs by itself), and
the reset programs emitting a bare event each (time, kind, direction) with
the others returning at once (BENCH_MINIMAL: the least it costs to see
both resets of every connect through the ring buffer).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from stormlab import out_rsts, proc_stats, storm, storm_namespace


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="storm length per round")
    ap.add_argument("--rounds", type=int, default=3, help="untraced/traced pairs")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--floor", action="store_true",
                    help="also measure the programs attached but returning at once")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_storm needs root (namespaces, BPF)", file=sys.stderr)
        return 2
    results = {"untraced": [], "traced": [], "floor": [], "minimal": []}
    with storm_namespace("rtbench") as (ns, binary):
        tmp = Path(binary).parent
        storm(ns, binary, 0.5)  # warm up
        for rnd in range(args.rounds):
            refused, elapsed = storm(ns, binary, args.seconds)
            results["untraced"].append({"rate": refused / elapsed})

            rec = tmp / f"storm-{rnd}.jsonl"
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "rsttrace", "record", "-o", str(rec),
                                     "--netns", ns, "--quiet", "--ctx-period", "1"],
                                    stderr=subprocess.PIPE, text=True)
            while not rec.exists() or rec.stat().st_size == 0:
                if proc.poll() is not None:
                    raise SystemExit("record failed: " + proc.stderr.read())
                time.sleep(0.01)
            ready_s = time.monotonic() - t0
            header = json.loads(rec.read_text().split("\n", 1)[0])
            before = out_rsts(ns)
            refused, elapsed = storm(ns, binary, args.seconds)
            kernel_sent = out_rsts(ns) - before
            time.sleep(0.3)  # let the consumer drain
            cpu, rss = proc_stats(proc.pid)
            proc.terminate()
            proc.wait(timeout=30)
            lines = rec.read_text().splitlines()
            totals = json.loads(lines[-1])
            sent = sum(1 for line in lines if '"dir":"sent"' in line)
            recv = sum(1 for line in lines if '"dir":"recv"' in line)
            results["traced"].append({
                "rate": refused / elapsed, "kernel_resets_sent": kernel_sent,
                "recorded_sent": sent, "recorded_recv": recv, "lost": totals["lost"],
                "consumer_cpu_s": round(cpu, 2), "peak_rss_mb": round(rss / 2**20, 1),
                "attach_s": header["attach_s"], "start_to_attached_s": round(ready_s, 2),
            })
            rec.unlink()
            if args.floor:
                for key, define in BOUNDS:
                    results[key].append({"rate": bound_round(ns, binary, args.seconds, define)})
    un = [r["rate"] for r in results["untraced"]]
    tr = [r["rate"] for r in results["traced"]]
    ratio = (sum(tr) / len(tr)) / (sum(un) / len(un))
    print(f"{'round':<6}{'untraced/s':>12}{'traced/s':>10}{'kernel RSTs':>12}{'recorded':>10}"
          f"{'lost':>6}{'cpu s':>7}{'rss MB':>8}{'attach s':>9}{'ready s':>8}")
    for i, (u, t) in enumerate(zip(results["untraced"], results["traced"])):
        print(f"{i:<6}{u['rate']:>12.0f}{t['rate']:>10.0f}{t['kernel_resets_sent']:>12}"
              f"{t['recorded_sent']:>10}{t['lost']:>6}{t['consumer_cpu_s']:>7}{t['peak_rss_mb']:>8}"
              f"{t['attach_s']:>9}{t['start_to_attached_s']:>8}")
    print(f"traced/untraced rate ratio: {ratio:.3f} ({(1 - ratio) * 100:+.1f} % slowdown)")
    results["ratio"] = ratio
    for key, label in (("floor", "programs attached, returning at once"),
                       ("minimal", "bare events from the reset programs only")):
        if results[key]:
            rates = [r["rate"] for r in results[key]]
            bound = (sum(rates) / len(rates)) / (sum(un) / len(un))
            print(f"{label}: {[round(x) for x in rates]} resets/s, "
                  f"ratio {bound:.3f} ({(1 - bound) * 100:+.1f} %)")
            results[f"{key}_ratio"] = bound
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


BOUNDS = (("floor", "BENCH_RETURN_EARLY"), ("minimal", "BENCH_MINIMAL"))


def bound_round(ns: str, binary: str, seconds: float, define: str) -> float:
    """One storm with the programs built with a bound's define, their
    events drained (and dropped) as the recorder would read them."""
    from rsttrace.tracer.session import TraceSession
    ino = os.stat(f"/run/netns/{ns}").st_ino
    with TraceSession(netns=[ino], ctx_period_s=0, extra_defines=(define,)) as session:
        stop = threading.Event()

        def drain_loop():
            while not stop.is_set():
                session.poll_raw(0.05)

        drain = threading.Thread(target=drain_loop)
        drain.start()
        try:
            refused, elapsed = storm(ns, binary, seconds)
        finally:
            stop.set()
            drain.join()
    return refused / elapsed


if __name__ == "__main__":
    raise SystemExit(main())
