"""Exporter overhead: the CPU `rsttrace export` uses at idle (scraped every
second) and during a bounded reset storm, with loss, catch-up time and
memory.

    sudo .venv/bin/python bench/bench_export.py [--idle 10] [--seconds 3] [--max 200000]

The storm (bench/storm.c) runs in a throwaway namespace (prefix rtexp-),
connecting to a closed loopback port: each attempt is answered by a
no-socket reset that never leaves the namespace. The kernel's count of
resets sent there (TcpOutRsts) is the truth the exporter's
`rsttrace_resets_total{netns=...,direction="sent"}` is compared with. The
storm's rate is measured untraced first, then under the exporter, so the
cost to the workload shows too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from rsttrace.lab.netns import tcp_out_rsts
from stormlab import proc_stats, storm, storm_namespace


def scrape(url: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    dt = time.perf_counter() - t0
    return ({(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(text) for s in f.samples}, dt)


def sent_resets(samples: dict, ns: str) -> float:
    return sum(v for (name, labels), v in samples.items()
               if name == "rsttrace_resets_total" and dict(labels).get("netns") == ns
               and dict(labels).get("direction") == "sent")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=float, default=10.0, help="idle measurement, seconds")
    ap.add_argument("--seconds", type=float, default=3.0, help="storm length, seconds")
    ap.add_argument("--max", type=int, default=200_000, help="storm attempts at most")
    ap.add_argument("--catch-up", type=float, default=60.0, help="how long to wait for the counts")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_export needs root (namespaces, BPF)", file=sys.stderr)
        return 2
    exp = None
    res: dict = {}
    with storm_namespace("rtexp-bench") as (ns, binary):
        try:
            storm(ns, binary, 0.5, args.max)   # warm up
            refused, elapsed = storm(ns, binary, args.seconds, args.max)
            res["untraced_rate"] = refused / elapsed

            exp = subprocess.Popen([sys.executable, "-m", "rsttrace", "export", "--listen", "127.0.0.1:0",
                                    "--duration", str(args.idle + args.seconds + args.catch_up + 60)],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            url = exp.stdout.readline().strip()
            if not url.startswith("http://"):
                print("bench_export: the exporter did not start", file=sys.stderr)
                return 1
            time.sleep(2.0)    # attach and the first context snapshots
            scrape(url)

            # idle: scraped every second, like an eager Prometheus
            cpu0, _ = proc_stats(exp.pid)
            t0 = time.monotonic()
            lat = []
            while time.monotonic() - t0 < args.idle:
                lat.append(scrape(url)[1])
                time.sleep(1.0)
            cpu1, _ = proc_stats(exp.pid)
            res["idle_cpu_pct"] = 100 * (cpu1 - cpu0) / (time.monotonic() - t0)
            res["scrape_ms_median"] = 1000 * sorted(lat)[len(lat) // 2]

            # storm: the workload's rate, then the time until the exporter has counted it
            base = tcp_out_rsts(ns)
            before, _ = scrape(url)
            counted0 = sent_resets(before, ns)
            cpu0, _ = proc_stats(exp.pid)
            t0 = time.monotonic()
            refused, elapsed = storm(ns, binary, args.seconds, args.max)
            truth = tcp_out_rsts(ns) - base
            res["traced_rate"] = refused / elapsed
            res["storm_resets"] = truth
            counted = counted0
            samples = before
            lost0 = before.get(("rsttrace_events_lost_total", ()), 0.0)
            busy = 0.0
            last_change = time.monotonic()
            # done when every reset is counted (or lost), or when the counts
            # have not moved for 3 s (some lost events were not resets)
            while time.monotonic() - t0 < args.seconds + args.catch_up:
                samples, _ = scrape(url)
                c = sent_resets(samples, ns)
                if c != counted:
                    counted, last_change = c, time.monotonic()
                    busy = last_change - t0
                lost = samples.get(("rsttrace_events_lost_total", ()), 0.0) - lost0
                if counted - counted0 + lost >= truth or time.monotonic() - last_change > 3:
                    break
                time.sleep(0.2)
            cpu1, hwm = proc_stats(exp.pid)
            res["counted"] = counted - counted0
            res["lost"] = samples.get(("rsttrace_events_lost_total", ()), 0.0) - lost0
            res["catch_up_s"] = max(0.0, busy - elapsed)
            # the CPU to the last count (the few seconds of waiting after it are idle)
            res["storm_cpu_s"] = cpu1 - cpu0
            res["cpu_us_per_reset"] = 1e6 * (cpu1 - cpu0) / max(truth, 1)
            res["peak_rss_mib"] = hwm / 2**20
            res["workload_cost_pct"] = 100 * (1 - res["traced_rate"] / res["untraced_rate"])
        finally:
            if exp is not None and exp.poll() is None:
                exp.terminate()
                try:
                    exp.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    exp.kill()
                    exp.wait(timeout=5)

    print(f"idle: {res['idle_cpu_pct']:.2f} % of a CPU, scraped every 1 s "
          f"(scrape {res['scrape_ms_median']:.1f} ms median)")
    print(f"storm: {res['storm_resets']} resets, {res['untraced_rate']:.0f}/s untraced, "
          f"{res['traced_rate']:.0f}/s under the exporter ({res['workload_cost_pct']:+.0f} % cost)")
    print(f"exporter: {res['storm_cpu_s']:.2f} CPU-s ({res['cpu_us_per_reset']:.1f} us per reset, "
          f"sent and received sides classified), counted {res['counted']:.0f} "
          f"of {res['storm_resets']}, {res['lost']:.0f} events lost, caught up "
          f"{res['catch_up_s']:.1f} s after the storm, peak RSS {res['peak_rss_mib']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
