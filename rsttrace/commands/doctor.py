"""`rsttrace doctor`: what this kernel lets rsttrace see, and how the node's
namespaces are configured against the timeout ordering rule."""

from __future__ import annotations

import argparse
import json
import os
import sys

from rsttrace.analysis.safe import printable
from rsttrace.cli import CLIError

EPILOG = """\
examples:
  sudo rsttrace doctor            attach plan, kernel facts, config audit
  sudo rsttrace doctor --json     the same as JSON
  sudo rsttrace doctor --load     also compile and load the programs for real
  sudo rsttrace doctor --cost 10  also what the programs cost this node at its
                                  traffic now: runs/s and ns per run per hook,
                                  measured for 10 s by the kernel itself
"""


def register(sub) -> None:
    p = sub.add_parser("doctor", help="attach plan, kernel facts and config audit",
                       description="Say which signals this kernel lets rsttrace see (and why not), "
                                   "and audit every namespace's timeouts and conntrack.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--load", action="store_true",
                   help="compile, load and attach the programs, then detach")
    p.add_argument("--cost", type=float, metavar="SECONDS",
                   help="load the programs and measure, for SECONDS, how often each runs and how "
                        "long it takes (the kernel's run statistics, on only meanwhile)")
    p.set_defaults(run=run)


def measure_cost(session, seconds: float) -> dict:
    """The programs' runs over `seconds` of this node's traffic, their
    events drained and dropped meanwhile (so no ring fills)."""
    import time

    from rsttrace.tracer.runstats import RunStats, cost

    with session.discarding(), RunStats(session) as stats:
        t0 = time.monotonic()
        time.sleep(seconds)
        runs = stats.stop()
        elapsed = time.monotonic() - t0
    return cost(runs, elapsed)


def gather(load: bool, cost_s: float | None = None) -> dict:
    from rsttrace.tracer import access, kernel, probe
    from rsttrace.tracer.context import Collector

    # first: it checks the capabilities before anything tries to mount tracefs
    missing = access.problem()
    caps = probe.probe()
    hooks = probe.plan(caps)
    headers = kernel.find_headers(fix=os.geteuid() == 0)
    transport, transport_why = probe.transport(caps)
    report = {
        "kernel": caps.kernel,
        "facts": {
            "access": missing or "ok: the capabilities, tracefs and BTF tracing needs",
            "tracefs": caps.tracefs_note,
            "btf": "present (/sys/kernel/btf/vmlinux)" if caps.btf else "absent",
            "headers": headers.note,
            "kprobes": caps.kprobes_note,
            "fexit": caps.fentry_note,
            "tp_btf": caps.tp_btf_note,
            "kfunc cast": caps.rdonly_cast_note,
            "ring buffer": "yes" if caps.ringbuf else "no",
            "per-CPU rings": "yes" if caps.percpu_rings else f"no: {caps.percpu_rings_note}",
            "transport": transport_why,
            "conntrack": "yes" if caps.conntrack else "no",
            "ipvs": caps.ipvs_note,
            "layouts": layouts(caps),
            "hz": kernel.kernel_hz(),
        },
        "plan": probe.plan_summary(hooks),
    }
    if load or cost_s:
        from rsttrace.tracer.session import SessionError, TraceSession
        try:
            with TraceSession(ctx_period_s=0) as s:
                report["facts"]["load"] = (f"compiled, loaded and attached in {s.attach_s:.2f} s "
                                           f"as {s.header['hooks']}")
                if cost_s:
                    report["cost"] = measure_cost(s, cost_s)
        except SessionError as e:
            report["facts"]["load"] = f"FAILED: {e}"
    col = Collector()
    try:
        ctx = col.snapshot()
    finally:
        col.close()
    report["namespaces"] = ctx["namespaces"]
    try:
        from rsttrace.analysis.config import audit
        report["findings"] = [f.__dict__ for f in audit(ctx)]
    except ImportError:
        report["findings"] = []
    return report


def layouts(caps) -> str:
    """Where the programs' struct layouts come from: BTF, and for IPVS BTF
    or this kernel's exact headers, or nowhere (then why)."""
    base = "BTF (/sys/kernel/btf/vmlinux)" if caps.btf else "nowhere: no BTF (/sys/kernel/btf/vmlinux)"
    if caps.ipvs_layout_note:
        ipvs = caps.ipvs_layout_note
    else:
        ipvs = "not read (" + (caps.kprobes_note if caps.ipvs else caps.ipvs_note) + ")"
    return f"kernel structs from {base}; IPVS: {ipvs}"


def _fmt(v) -> str:
    """A value of the host for the terminal: through the one sanitiser
    (a namespace, a mount path or a kernel note may hold any byte)."""
    return "-" if v is None else printable(v)


def run(args) -> int:
    if os.geteuid() != 0:
        raise CLIError("doctor needs root (tracefs, BPF and every namespace): run it with sudo")
    if args.cost is not None and not 0 < args.cost <= 3600:
        raise CLIError("--cost takes the seconds to measure, more than 0 and at most 3600")
    rep = gather(args.load, args.cost)
    if args.json:
        json.dump(rep, sys.stdout, indent=2, default=str)
        print()
        return 0
    w = sys.stdout.write
    w(f"rsttrace doctor — kernel {_fmt(rep['kernel'])}\n\nSignals (attach plan)\n")
    for name, h in rep["plan"].items():
        mark = "ok " if h["available"] else "-- "
        w(f"  {mark}{name:<12} {_fmt(h['hook'] or 'unavailable')}\n")
        w(f"       {'':<12} {_fmt(h['why'])}\n")
    w("\nKernel\n")
    width = max(map(len, rep["facts"]))
    for k, v in rep["facts"].items():
        w(f"  {k:<{width}} {_fmt(v)}\n")
    w("\nNamespaces (sockets or conntrack entries)\n")
    w(f"  {'netns':<11} {'name':<18} {'ct count/max':>14} {'drop':>5} {'inval':>5} "
      f"{'ka':>6} {'ct est':>7} {'ipvs':>5}\n")
    for n in rep["namespaces"]:
        ct = n.get("ct") or {}
        sc = n.get("sysctl") or {}
        ipvs = (n.get("ipvs") or {}).get("tcp")
        name = _fmt(n.get("name"))[:18]
        w(f"  {_fmt(n['netns']):<11} {name:<18} {_fmt(ct.get('count')) + '/' + _fmt(ct.get('max')):>14} "
          f"{_fmt(ct.get('drop')):>5} {_fmt(ct.get('invalid')):>5} "
          f"{_fmt(sc.get('tcp_keepalive_time')):>6} {_fmt(sc.get('nf_conntrack_tcp_timeout_established')):>7} "
          f"{_fmt(ipvs):>5}\n")
    w("\nAudit (rule: keepalive < IPVS tcp timeout <= conntrack established)\n")
    if not rep["findings"]:
        w("  no problems found\n")
    for f in rep["findings"]:
        w(f"  {f['severity']:<8} {_fmt(f['message'])}\n")
    if "cost" in rep:
        write_cost(w, rep["cost"])
    return 0


def write_cost(w, c: dict) -> None:
    w(f"\nCost at this node's traffic ({c['seconds']:.1f} s, the kernel's run statistics)\n")
    if not c["hooks"]:
        w("  no program ran\n")
        return
    w(f"  {'hook':<24} {'runs/s':>10} {'ns/run':>7} {'% of a CPU':>11}\n")
    for hook, h in c["hooks"].items():
        w(f"  {hook:<24} {h['runs_per_s']:>10.1f} {h['ns_per_run']:>7} {h['cpu_pct']:>11.4f}\n")
    w(f"  all programs: {c['cpu_pct']:.4f} % of one CPU: the time inside them, with the\n"
      "  clock reads that measure it; not the tracepoints' calls into them, which cost\n"
      "  more where the kernel mitigates indirect calls and returns (measured by\n"
      "  bench/bench_storm.py --floor)\n")
