"""Reset-storm benchmark: the workload's reset rate untraced vs traced by
`rsttrace record`, in the same run, plus loss, consumer CPU, peak RSS and
time to attach.

    sudo .venv/bin/python bench/bench_storm.py [--seconds 3] [--rounds 3] [--floor]

The storm (bench/storm.c, compiled here) runs in a throwaway network
namespace, connecting to a closed loopback port: every attempt is answered
by a reset that never leaves the namespace. Rounds alternate untraced and
traced, and each traced storm is compared with the untraced storms just
before and after it (the median of those ratios is the result), so drift
on a shared machine cancels out. The kernel's own count
of resets sent (TcpOutRsts in the namespace's /proc/net/snmp) is the truth
the recording is compared with.

--floor adds three storms per round that bound what any tracer built on
these hooks could cost: the same programs attached but returning at once
(BENCH_RETURN_EARLY: what running attached programs costs by itself), the
reset programs emitting a bare event each (time, kind, direction) with the
others returning at once (BENCH_MINIMAL: the least it costs to see both
resets of every connect), and the programs as rsttrace builds them with
their events drained and dropped in this process (what the kernel side
costs: the difference to `rsttrace record` is the recorder's own).

--workload churn measures healthy connection churn instead (connect,
accept, one byte each way, close; no reset): what tracing costs a node when
nothing is wrong, every connection passing the state-change program.

--compare "OPTIONS" adds a storm per round recorded by `rsttrace record`
with these options added, compared in the same run: `--compare "--transport
ringbuf"` the BPF ring buffer instead of the per-CPU rings (the default
where they work), `--compare "--burst-buffer 0"` every event written as JSON
text as it comes instead of held raw during the storm.

Per traced round: the recorder's CPU until 0.3 s after the storm ("cpu s",
start-up included, its compiler process not), the events it held raw during
the storm ("held"), the CPU it spent after being told to stop, writing them
("+cpu s"), and how long that took ("stop s").

--hooks adds two storms at the end, with the kernel counting every program
run and its time (bpf(BPF_ENABLE_STATS), held only for those storms): the
programs as rsttrace builds them, and returning at once. Per hook it
prints runs per connect and nanoseconds per run; the difference between
the two builds is each program's own work, and their sum per connect is
set against the CPU time an untraced connect takes. (What calling the
programs costs beyond that is --floor's "returning at once".)

--loops N runs N storm loops at once (default 1). One loop keeps one CPU
busy and leaves the recorder the other; with a loop per CPU (--loops 2
here) the machine makes its highest rate and every CPU-second the recorder
spends is taken from the storm.

The recording's sent resets are its `reset` records plus the `count` of
its `reset_agg` records (storm mode, above `record --storm-rate`): their
sum is compared with the kernel's count in every round. `--compare
"--storm-rate 0"` measures every reset in full beside it.

--peers adds a storm per round captured by tcpdump with a reset filter,
inside the namespace, to a pcap file (PLATFORM's closest peer): its rate
ratio, the resets it captured against the kernel's count, the packets it
says the kernel dropped, and its CPU.

--pin runs the storm on CPU 0 and everything else (the recorder, this
script) on the other CPUs: the cost in the kernel alone, without the
recorder's own CPU time landing on the workload's CPU when the scheduler
puts it there.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from rsttrace.lab.netns import tcp_out_rsts
from stormlab import children_cpu, end_process, proc_stats, storm, storm_namespace


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="storm length per round")
    ap.add_argument("--rounds", type=int, default=3, help="untraced/traced pairs")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--floor", action="store_true",
                    help="also measure two lower bounds: the programs attached but returning "
                         "at once, and bare events from the reset programs only")
    ap.add_argument("--workload", choices=("refused", "churn"), default="refused",
                    help="connects refused by a reset (default), or healthy connection churn")
    ap.add_argument("--pin", action="store_true",
                    help="storm on CPU 0, the recorder and this script on the others")
    ap.add_argument("--compare", metavar="OPTIONS",
                    help="also a storm per round recorded with these `rsttrace record` options "
                         "added (e.g. \"--transport ringbuf\" or \"--burst-buffer 0\")")
    ap.add_argument("--hooks", action="store_true",
                    help="also, per hook: runs per connect and time per run from the kernel's "
                         "own statistics, the programs as built and returning at once")
    ap.add_argument("--peers", action="store_true",
                    help="also a storm per round captured by tcpdump with a reset filter")
    ap.add_argument("--loops", type=int, default=1,
                    help="storm loops at once (a loop per CPU: the machine's highest rate)")
    args = ap.parse_args()
    if args.loops < 1 or (args.pin and args.loops > 1):
        print("--loops must be at least 1, and 1 with --pin", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench_storm needs root (namespaces, BPF)", file=sys.stderr)
        return 2
    storm_cpu = None
    if args.pin:
        others = os.sched_getaffinity(0) - {0}
        if not others or 0 not in os.sched_getaffinity(0):
            print("--pin needs CPU 0 and at least one other CPU", file=sys.stderr)
            return 2
        os.sched_setaffinity(0, others)  # inherited by the recorder
        storm_cpu = 0
    results = {"untraced": [], "traced": [], "other": [], "floor": [], "minimal": [], "drained": [],
               "tcpdump": [], "hooks": {},
               "pinned": args.pin, "workload": args.workload, "loops": args.loops}
    with storm_namespace("rtbench") as (ns, binary):
        tmp = Path(binary).parent
        storm(ns, binary, 0.5, cpu=storm_cpu, workload=args.workload, loops=args.loops)  # warm up
        for rnd in range(args.rounds):
            count, elapsed = storm(ns, binary, args.seconds, cpu=storm_cpu, workload=args.workload,
                                   loops=args.loops)
            results["untraced"].append({"rate": count / elapsed})

            results["traced"].append(traced_round(ns, binary, tmp / f"storm-{rnd}.jsonl", args,
                                                  storm_cpu))
            if args.compare:
                results["other"].append(traced_round(ns, binary, tmp / f"other-{rnd}.jsonl", args,
                                                     storm_cpu, shlex.split(args.compare)))
            if args.peers:
                results["tcpdump"].append(tcpdump_round(ns, binary, tmp / f"rst-{rnd}.pcap", args,
                                                        storm_cpu))
            if args.floor:
                for key, define in BOUNDS:
                    count, elapsed = bound_round(ns, binary, args.seconds, define, storm_cpu,
                                                 args.workload, args.loops)
                    results[key].append({"rate": count / elapsed})
        # the untraced rate after the last round, so every round sits between two
        count, elapsed = storm(ns, binary, args.seconds, cpu=storm_cpu, workload=args.workload,
                                   loops=args.loops)
        results["untraced"].append({"rate": count / elapsed})
        if args.hooks:
            for key, define in HOOK_BUILDS:
                runs = {}
                count, _ = bound_round(ns, binary, args.seconds, define, storm_cpu, args.workload,
                                       args.loops, runs)
                results["hooks"][key] = {"connects": count, "runs": runs}
    un = [r["rate"] for r in results["untraced"]]
    # Each measured storm against the untraced storms just before and just
    # after its round: the machine's drift between rounds cancels out.
    base = [(un[i] + un[i + 1]) / 2 for i in range(args.rounds)]
    per_round = {key: [r["rate"] / b for r, b in zip(results[key], base)]
                 for key in ("traced", "other", "floor", "minimal", "drained", "tcpdump")}
    print(f"events through: {results['traced'][0]['transport']}; storm loops at once: {args.loops}")
    print(f"{'round':<6}{'untraced/s':>12}{'traced/s':>10}{'kernel RSTs':>12}{'recorded':>10}"
          f"{'lost':>6}{'cpu s':>7}{'held':>8}{'+cpu s':>7}{'stop s':>7}{'rss MB':>8}{'attach s':>9}"
          f"{'ready s':>8}")
    for i, (u, t) in enumerate(zip(results["untraced"], results["traced"])):
        print(f"{i:<6}{u['rate']:>12.0f}{t['rate']:>10.0f}{t['kernel_resets_sent']:>12}"
              f"{t['recorded_sent']:>10}{t['lost']:>6}{t['consumer_cpu_s']:>7}{t['held']:>8}"
              f"{t['cpu_after_stop_s']:>7}{t['stop_s']:>7}{t['peak_rss_mb']:>8}"
              f"{t['attach_s']:>9}{t['start_to_attached_s']:>8}")
    print(f"{'after':<6}{un[-1]:>12.0f}")
    results["per_round"] = per_round
    for key, label in (("traced", f"traced by rsttrace record ({results['traced'][0]['transport']})"),
                       ("other", f"traced with {args.compare}"),
                       ("floor", "programs attached, returning at once"),
                       ("minimal", "bare events from the reset programs only"),
                       ("drained", "the programs as built, events drained in process"),
                       ("tcpdump", "tcpdump with a reset filter, to a pcap file")):
        if per_round[key]:
            median = statistics.median(per_round[key])
            print(f"{label}: rate ratio to untraced, median {median:.3f} ({(1 - median) * 100:+.1f} % "
                  f"slowdown); per round {', '.join(f'{x:.3f}' for x in per_round[key])}")
            results["ratio" if key == "traced" else f"{key}_ratio"] = median
    for key, label in (("traced", "traced"), ("other", f"with {args.compare}")):
        if results[key]:
            r = results[key]

            def span(field):
                return f"{min(x[field] for x in r)}–{max(x[field] for x in r)}"
            mode = (f"storm mode above {r[0]['storm_rate']} resets/s per CPU: "
                     f"{sum(x['detailed_sent'] for x in r)} sent resets in detail + "
                     f"{sum(x['counted_sent'] for x in r)} counted in the kernel; "
                     if r[0]["storm_rate"] else "storm mode off; ")
            print(f"{label} ({r[0]['transport']}): {mode}lost {sum(x['lost'] for x in r)}, recorded sent "
                  f"resets (detailed + counted) == the kernel's count in "
                  f"{sum(x['recorded_sent'] == x['kernel_resets_sent'] for x in r)}"
                  f" of {len(r)} rounds, consumer CPU {span('consumer_cpu_s')} s per round until 0.3 s "
                  f"after the storm, then {span('cpu_after_stop_s')} s writing {span('held')} held "
                  f"events in {span('stop_s')} s")
    if results["tcpdump"]:
        r = results["tcpdump"]
        print(f"tcpdump: captured {sum(x['captured'] for x in r)} of the kernel's "
              f"{sum(x['kernel_resets_sent'] for x in r)} resets, {sum(x['dropped'] for x in r)} "
              f"dropped by the kernel (its own count), CPU {min(x['cpu_s'] for x in r)}–"
              f"{max(x['cpu_s'] for x in r)} s per round")
    if results["hooks"]:
        print_hooks(results, statistics.median(un), args.loops)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_hooks(results: dict, untraced_rate: float, loops: int) -> None:
    """Per hook: runs per connect, ns per run as built and returning at
    once, and the difference (the programs' own work); their sum per
    connect against the CPU time an untraced connect takes."""
    built, early = results["hooks"]["built"], results["hooks"]["early"]
    print("per hook, from the kernel's own run statistics (one storm each; a run's time "
          "includes the clock reads around it, which is what returning at once shows):")
    print(f"{'hook':<24}{'runs/connect':>13}{'ns/run built':>14}{'returning':>11}{'own work ns':>13}")
    work = 0.0
    for hook in sorted(built["runs"]):
        n, t = built["runs"][hook]
        en, et = early["runs"].get(hook, (0, 0))
        per_run = t / n
        floor = et / en if en else 0.0
        per_connect = n / built["connects"]
        work += (per_run - floor) * per_connect
        print(f"{hook:<24}{per_connect:>13.2f}{per_run:>14.0f}{floor:>11.0f}"
              f"{(per_run - floor) * per_connect:>13.0f}")
    connect_ns = loops / untraced_rate * 1e9
    results["hooks"]["own_work_ns_per_connect"] = round(work)
    results["hooks"]["cpu_ns_per_connect_untraced"] = round(connect_ns)
    print(f"the programs' own work: {work:.0f} ns per connect, {work / connect_ns * 100:.1f} % of the "
          f"{connect_ns:.0f} CPU-ns an untraced connect takes ({loops} busy CPU(s) / untraced rate); "
          f"the rest of their cost is calling them (see --floor)")


def counted_storm(ns: str, binary: str, args, cpu: int | None) -> tuple[int, float, int]:
    """(connects, elapsed s, resets the kernel counted as sent: TcpOutRsts)
    of one storm with the run's options."""
    before = tcp_out_rsts(ns)
    count, elapsed = storm(ns, binary, args.seconds, cpu=cpu, workload=args.workload,
                           loops=args.loops)
    return count, elapsed, tcp_out_rsts(ns) - before


def traced_round(ns: str, binary: str, rec: Path, args, cpu: int | None,
                 options: list[str] = ()) -> dict:
    """One storm recorded by `rsttrace record` (with `options` added): its
    rate, the kernel's count of resets sent against the recording's, loss,
    the recorder's CPU and peak RSS, time to attach."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "rsttrace", "record", "-o", str(rec),
                             "--netns", ns, "--quiet", "--ctx-period", "1",
                             *options],
                            stderr=subprocess.PIPE, text=True)
    while not rec.exists() or rec.stat().st_size == 0:
        if proc.poll() is not None:
            raise SystemExit("record failed: " + proc.stderr.read())
        time.sleep(0.01)
    ready_s = time.monotonic() - t0
    header = json.loads(rec.read_text().split("\n", 1)[0])
    count, elapsed, kernel_sent = counted_storm(ns, binary, args, cpu)
    time.sleep(0.3)  # let the consumer drain
    cpu_s, rss = proc_stats(proc.pid)
    helpers = children_cpu(proc.pid)
    stop_s, life_cpu_s = end_process(proc)   # events held during the storm are written now
    lines = rec.read_text().splitlines()
    totals = json.loads(lines[-1])
    # storm mode: resets counted in the kernel come as reset_agg records,
    # each standing for `count` resets; every other reset is a line of its own
    counted = {"sent": 0, "recv": 0}
    detailed = {"sent": 0, "recv": 0}
    for line in lines:
        if '"kind":"reset_agg"' in line:
            agg = json.loads(line)
            counted[agg["dir"]] += agg["count"]
        elif '"dir":"sent"' in line:
            detailed["sent"] += 1
        elif '"dir":"recv"' in line:
            detailed["recv"] += 1
    rec.unlink()
    return {"rate": count / elapsed, "kernel_resets_sent": kernel_sent,
            "recorded_sent": detailed["sent"] + counted["sent"],
            "recorded_recv": detailed["recv"] + counted["recv"],
            "detailed_sent": detailed["sent"], "counted_sent": counted["sent"],
            "storm_rate": header.get("storm_rate", 0), "lost": totals["lost"],
            "consumer_cpu_s": round(cpu_s, 2), "peak_rss_mb": round(rss / 2**20, 1),
            "cpu_after_stop_s": round(life_cpu_s - helpers - cpu_s, 2), "stop_s": round(stop_s, 2),
            "held": totals.get("burst_held", 0),
            "attach_s": header["attach_s"], "start_to_attached_s": round(ready_s, 2),
            "transport": header["transport"]}


def tcpdump_round(ns: str, binary: str, pcap: Path, args, cpu: int | None) -> dict:
    """One storm captured by tcpdump (every segment with RST set, inside the
    namespace, written to `pcap`): its rate, the resets captured against the
    kernel's count, what tcpdump says the kernel dropped, its CPU."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", "lo", "-n", "-Z", "root",
                             "-w", str(pcap), "tcp[tcpflags] & tcp-rst != 0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        err = ""
        while "listening on" not in err:   # tcpdump says so once it captures
            line = proc.stderr.readline()
            if not line:
                raise SystemExit("tcpdump failed: " + err)
            err += line
        count, elapsed, kernel_sent = counted_storm(ns, binary, args, cpu)
        time.sleep(1.2)   # its last block of packets is handed over after 1 s
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.send_signal(signal.SIGINT)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = proc.stderr.read()
    stats = {}
    for line in tail.splitlines():   # "N packets captured", "... dropped by kernel"
        words = line.split(" ", 1)
        if words[0].isdigit() and len(words) == 2:
            stats[words[1].strip()] = int(words[0])
    if "packets captured" not in stats:
        raise SystemExit(f"tcpdump ended without its counts (exit {proc.returncode}): {tail}")
    pcap.unlink(missing_ok=True)
    return {"rate": count / elapsed, "kernel_resets_sent": kernel_sent,
            "captured": stats["packets captured"], "dropped": stats.get("packets dropped by kernel", 0),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


# (result key, define the programs are built with; None: as rsttrace builds them)
BOUNDS = (("floor", "BENCH_RETURN_EARLY"), ("minimal", "BENCH_MINIMAL"), ("drained", None))
# --hooks: the programs as rsttrace builds them, and returning at once
HOOK_BUILDS = (("built", None), ("early", "BENCH_RETURN_EARLY"))


def bound_round(ns: str, binary: str, seconds: float, define: str | None, cpu: int | None,
                workload: str, loops: int, runs: dict | None = None) -> tuple[int, float]:
    """(connects, elapsed s) of one storm with the programs built with a
    bound's define (or as rsttrace builds them), their events drained (and
    dropped) as the recorder would read them. With `runs` (a dict), the
    kernel keeps its run statistics during the storm and `runs` gets, per
    hook, the programs' (runs, run time ns) in it."""
    from rsttrace.tracer.runstats import RunStats
    from rsttrace.tracer.session import TraceSession
    ino = os.stat(f"/run/netns/{ns}").st_ino
    with TraceSession(netns=[ino], ctx_period_s=0, extra_defines=(define,) if define else ()) as session:
        with session.discarding(), (RunStats(session) if runs is not None else nullcontext()) as stats:
            count, elapsed = storm(ns, binary, seconds, cpu=cpu, workload=workload, loops=loops)
            if stats:
                runs.update(stats.stop())
    return count, elapsed


if __name__ == "__main__":
    raise SystemExit(main())
