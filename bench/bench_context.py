"""Context collector cost on a node with many pods: the CPU one snapshot
takes (every namespace's conntrack counters, sysctls, TCP socket count,
IPVS timeouts) with N extra namespaces on the host, each with a TCP
listener in it as a pod would have. Both ways in the same run, alternating:
each namespace's /proc/sys files kept open and read again in place (as
rsttrace samples), and opened and closed on every read (as it did before).

    sudo .venv/bin/python bench/bench_context.py [--namespaces 100] [--snapshots 20] [--rounds 5]

The namespaces (prefix rtctx-) hold nothing but a listener on their own
loopback, and are removed afterwards, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from rsttrace.tracer.context import Collector

LISTENER = ("import socket, sys; s = socket.create_server(('127.0.0.1', 3306)); "
            "print('ready', flush=True); sys.stdin.read()")


def snapshot_cpu(col: Collector, snapshots: int) -> float:
    """CPU seconds of this process per snapshot (the collector's thread
    included), over `snapshots` snapshots."""
    t0 = time.process_time()
    for _ in range(snapshots):
        col.snapshot()
    return (time.process_time() - t0) / snapshots


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--namespaces", type=int, default=100, help="extra namespaces (1-1000)")
    ap.add_argument("--snapshots", type=int, default=20, help="snapshots per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="kept/reopened pairs")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_context needs root (namespaces)", file=sys.stderr)
        return 2
    if not 1 <= args.namespaces <= 1000:
        print("--namespaces must be 1-1000", file=sys.stderr)
        return 2
    tag = f"rtctx-{uuid.uuid4().hex[:6]}"
    names, procs = [], []
    try:
        for i in range(args.namespaces):
            name = f"{tag}-{i}"
            subprocess.run(["ip", "netns", "add", name], check=True)
            names.append(name)
            subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
            p = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", LISTENER],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            if p.stdout.readline().strip() != "ready":
                raise SystemExit(f"listener in {name} did not start")
        kept, reopened = Collector(), Collector()
        reopened._keep_netns = 0   # every /proc/sys file opened and closed on each read
        try:
            listed = len(kept.snapshot()["namespaces"])
            reopened.snapshot()
            results = {"namespaces": args.namespaces, "listed": listed, "kept": [], "reopened": []}
            for _ in range(args.rounds):
                results["kept"].append(snapshot_cpu(kept, args.snapshots))
                results["reopened"].append(snapshot_cpu(reopened, args.snapshots))
            fds = sum(len(files) for files in kept._files.values())
        finally:
            kept.close()
            reopened.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    k, r = statistics.median(results["kept"]), statistics.median(results["reopened"])
    results.update(kept_ms=round(k * 1e3, 2), reopened_ms=round(r * 1e3, 2), ratio=round(k / r, 3),
                   open_fds=fds)
    print(f"{args.namespaces} extra namespaces ({listed} listed in a snapshot, each with a listener)")
    print(f"CPU per snapshot, median of {args.rounds} x {args.snapshots}: files kept open "
          f"{k * 1e3:.1f} ms, opened on every read {r * 1e3:.1f} ms: ratio {k / r:.2f}")
    print(f"per namespace: {k / listed * 1e6:.0f} µs kept, {r / listed * 1e6:.0f} µs reopened; "
          f"at one snapshot a second, {k * 100:.1f} % vs {r * 100:.1f} % of a CPU; "
          f"descriptors the collector keeps open: {fds}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
