"""The agent's memory and CPU over time: idle, through a bounded reset
storm, and after it.

    sudo .venv/bin/python bench/bench_agent.py [--idle 10] [--after 20] [--max 200000]
    sudo .venv/bin/python bench/bench_agent.py --command export     rsttrace export

`rsttrace agent` (or `rsttrace export`) runs as a subprocess, scraped every
second; a sampler reads its RSS and CPU from /proc every 0.2 s. The storm
(bench/storm.c) runs in a throwaway namespace (prefix rtagt-), connecting to
a closed loopback port at most --max times: each attempt is answered by a
no-socket reset that never leaves the namespace. The kernel's count of the
resets sent there (TcpOutRsts) is the truth the metrics
(`rsttrace_resets_total{direction="sent"}`), the agent's log lines (one per
reset, or counted in a `resets_not_logged` line past --log-rate) and its
flight recorder's files are each compared with.

Reported: RSS at idle (median), its peak during the storm and catch-up,
RSS after the storm (the last --after seconds' median) against idle; CPU
at idle (scraped every second), CPU-s of the storm per reset; the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rsttrace.lab.netns import tcp_out_rsts
from stormlab import proc_stats, scrape, sent_resets, storm, storm_namespace, total


RSS_KINDS = ("RssAnon", "RssFile", "RssShmem")


def rss(pid: int) -> tuple[int, ...]:
    """(VmRSS, and its anonymous, file and shared parts) in bytes; the
    shared part is what the process maps of the kernel's BPF rings."""
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key == "VmRSS" or key in RSS_KINDS:
            got[key] = int(rest.split()[0]) * 1024
    return (got.get("VmRSS", 0), *(got.get(k, 0) for k in RSS_KINDS))


class Sampler(threading.Thread):
    """(seconds since start, phase, RSS bytes, CPU seconds, (anon, file,
    shared bytes)) every `period`."""

    def __init__(self, pid: int, period: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.phase = "start"
        self.samples: list[tuple[float, str, int, float]] = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.wait(self.period):
            try:
                cpu, _ = proc_stats(self.pid)
                total, *parts = rss(self.pid)
                self.samples.append((time.monotonic() - self.t0, self.phase, total, cpu, tuple(parts)))
            except (OSError, ValueError, IndexError):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def of(self, *phases: str) -> list[tuple]:
        return [s for s in self.samples if s[1] in phases]


class Lines(threading.Thread):
    """Counts the agent's stdout lines: resets of namespace `ns`, and the
    resets past the rate limit."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.ns = None
        self.mine = 0
        self.not_logged = 0
        self.other = 0
        self.bad = 0

    def run(self) -> None:
        for line in self.stream:
            try:
                r = json.loads(line)
            except ValueError:
                self.bad += 1
                continue
            if r.get("kind") == "reset":
                if (r.get("sent") or {}).get("netns_name") == self.ns:
                    self.mine += 1
                else:
                    self.other += 1
            elif r.get("kind") == "resets_not_logged":
                self.not_logged += r["resets"]


def scraped_quiet(url: str, pid: int, seconds: float) -> tuple[float, float]:
    """The process's CPU (% of one) over `seconds` without resets,
    scraped every second like an eager Prometheus, and the median scrape
    time (ms)."""
    cpu0, _ = proc_stats(pid)
    t0 = time.monotonic()
    took = []
    while time.monotonic() - t0 < seconds:
        took.append(scrape(url)[1])
        time.sleep(1.0)
    cpu1, _ = proc_stats(pid)
    return 100 * (cpu1 - cpu0) / (time.monotonic() - t0), 1000 * statistics.median(took)


def recorded_sent(directory: Path, inode: int) -> tuple[int, int, int]:
    """(sent resets of namespace `inode` in the recordings, files, files
    with a totals line)."""
    n = files = complete = 0
    for p in sorted(directory.glob("rsttrace-*.jsonl")):
        files += 1
        last = ""
        with open(p) as fh:
            for line in fh:
                last = line
                if '"kind":"reset"' in line and '"dir":"sent"' in line and f'"netns":{inode},' in line:
                    n += 1
        complete += '"kind":"totals"' in last
    return n, files, complete


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--command", choices=("agent", "export"), default="agent")
    ap.add_argument("--idle", type=float, default=10.0, help="idle before the storm, seconds")
    ap.add_argument("--after", type=float, default=20.0, help="idle after the counts are in, seconds")
    ap.add_argument("--seconds", type=float, default=8.0, help="storm length at most, seconds")
    ap.add_argument("--max", type=int, default=200_000, help="storm attempts at most")
    ap.add_argument("--catch-up", type=float, default=60.0, help="how long to wait for the counts")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--samples", metavar="FILE.csv", help="write the RSS/CPU samples as CSV")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_agent needs root (namespaces, BPF)", file=sys.stderr)
        return 2
    proc = None
    res: dict = {"command": args.command}
    rec_dir = Path(tempfile.mkdtemp(prefix="rtagt-rec-"))
    try:
        with storm_namespace("rtagt-bench") as (ns, binary):
            storm(ns, binary, 0.5, args.max)       # warm up
            refused, elapsed = storm(ns, binary, 3.0, args.max)
            res["untraced_rate"] = refused / elapsed

            life = args.idle + args.seconds + args.catch_up + args.after + 60
            cmd = [sys.executable, "-m", "rsttrace", args.command, "--listen", "127.0.0.1:0",
                   "--duration", str(life)]
            if args.command == "agent":
                cmd += ["--record-dir", str(rec_dir / "rec"), "--node", "bench"]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            sampler = Sampler(proc.pid)
            sampler.start()
            url = ""
            stream = proc.stderr if args.command == "agent" else proc.stdout
            for line in stream:
                if "http://" in line:
                    url = "http://" + line.split("http://", 1)[1].split()[0].rstrip(",")
                    break
            if not url.endswith("/metrics"):
                print(f"bench_agent: {args.command} did not start: {proc.stderr.read()}", file=sys.stderr)
                return 1
            lines = None
            if args.command == "agent":
                lines = Lines(proc.stdout)
                lines.ns = ns
                lines.start()
                threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
            time.sleep(2.0)     # attach and the first context snapshots
            scrape(url)

            sampler.phase = "idle"
            res["idle_cpu_pct"], res["scrape_ms_median"] = scraped_quiet(url, proc.pid, args.idle)

            # storm, then until every reset is counted
            base = tcp_out_rsts(ns)
            before, _ = scrape(url)
            counted0 = sent_resets(before, ns)
            lost0 = total(before, "rsttrace_events_lost_total")
            sampler.phase = "storm"
            cpu0, _ = proc_stats(proc.pid)
            t0 = time.monotonic()
            refused, elapsed = storm(ns, binary, args.seconds, args.max)
            truth = tcp_out_rsts(ns) - base
            res["traced_rate"] = refused / elapsed
            res["storm_resets"] = truth
            sampler.phase = "catch-up"
            counted, samples = counted0, before
            backlog = 0.0
            while time.monotonic() - t0 < args.seconds + args.catch_up:
                samples, _ = scrape(url)
                counted = sent_resets(samples, ns)
                backlog = max(backlog, total(samples, "rsttrace_backlog_events"))
                if counted - counted0 >= truth:
                    break
                time.sleep(0.2)
            res["catch_up_s"] = time.monotonic() - t0 - elapsed
            res["backlog_peak_events"] = backlog
            cpu1, _ = proc_stats(proc.pid)
            res["counted"] = counted - counted0
            res["lost"] = total(samples, "rsttrace_events_lost_total") - lost0
            res["storm_cpu_s"] = cpu1 - cpu0
            res["cpu_us_per_reset"] = 1e6 * (cpu1 - cpu0) / max(truth, 1)

            sampler.phase = "after"
            res["after_cpu_pct"], _ = scraped_quiet(url, proc.pid, args.after)
            _cpu, hwm = proc_stats(proc.pid)
            res["hwm_mib"] = hwm / 2**20
            inode = os.stat(f"/run/netns/{ns}").st_ino

            proc.terminate()
            res["exit"] = proc.wait(timeout=30)
            sampler.stop()
            if lines is not None:
                lines.join(timeout=10)
                res["log_lines"] = lines.mine
                res["log_not_logged"] = lines.not_logged
                res["log_bad_lines"] = lines.bad
                res["recorded_sent"], res["files"], res["complete_files"] = \
                    recorded_sent(rec_dir / "rec", inode)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        shutil.rmtree(rec_dir, ignore_errors=True)

    mib = 2**20
    idle = [s[2] for s in sampler.of("idle")]
    busy = [s[2] for s in sampler.of("storm", "catch-up")]
    after = [s[2] for s in sampler.of("after")]
    late = [s[2] for s in sampler.of("after") if s[0] >= sampler.of("after")[-1][0] - 5]
    res["idle_rss_mib"] = statistics.median(idle) / mib
    res["peak_rss_mib"] = max(busy) / mib
    res["after_rss_mib"] = statistics.median(late or after) / mib
    res["workload_cost_pct"] = 100 * (1 - res["traced_rate"] / res["untraced_rate"])
    print(f"{args.command}: idle {res['idle_rss_mib']:.0f} MiB RSS, {res['idle_cpu_pct']:.2f} % of a CPU "
          f"(scraped every 1 s, {res['scrape_ms_median']:.1f} ms a scrape)")
    print(f"storm: {res['storm_resets']} resets, {res['untraced_rate']:.0f}/s untraced, "
          f"{res['traced_rate']:.0f}/s traced ({res['workload_cost_pct']:+.1f} % cost); "
          f"{res['storm_cpu_s']:.2f} CPU-s ({res['cpu_us_per_reset']:.1f} us per reset); "
          f"counted {res['counted']:.0f}, {res['lost']:.0f} lost, caught up {res['catch_up_s']:.1f} s "
          f"after the storm (backlog at most {res['backlog_peak_events']:.0f} events when scraped)")
    print(f"RSS: peak {res['peak_rss_mib']:.0f} MiB (VmHWM {res['hwm_mib']:.0f}), after "
          f"{res['after_rss_mib']:.0f} MiB ({res['after_rss_mib'] - res['idle_rss_mib']:+.0f} vs idle); "
          f"CPU after {res['after_cpu_pct']:.2f} %")
    if "log_lines" in res:
        print(f"log: {res['log_lines']} lines + {res['log_not_logged']} counted past the rate limit = "
              f"{res['log_lines'] + res['log_not_logged']} of {res['storm_resets']}; recordings: "
              f"{res['recorded_sent']} sent resets in {res['files']} files "
              f"({res['complete_files']} complete); exit {res['exit']}")
    for phase in ("idle", "storm", "catch-up", "after"):
        got = sampler.of(phase)
        if got:
            top = max(got, key=lambda s: s[2])
            res[f"{phase}_parts_mib"] = dict(zip(("anon", "file", "shared"),
                                                 (round(x / mib, 1) for x in top[4])))
    print("RSS parts at each phase's peak (MiB): " + "; ".join(
        f"{p} " + " ".join(f"{k} {v}" for k, v in res[f"{p}_parts_mib"].items())
        for p in ("idle", "storm", "catch-up", "after") if f"{p}_parts_mib" in res))
    # RSS over time, one value a second
    line = []
    for s in sampler.samples[::5]:
        line.append(f"{s[0]:.0f}s {s[1][0]} {s[2] / mib:.0f}")
    print("timeline (s phase MiB): " + ", ".join(line))
    if args.samples:
        with open(args.samples, "w") as fh:
            fh.write("t_s,phase,rss_bytes,cpu_s,anon_bytes,file_bytes,shared_bytes\n")
            for s in sampler.samples:
                fh.write(f"{s[0]:.2f},{s[1]},{s[2]},{s[3]:.2f},{','.join(map(str, s[4]))}\n")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
