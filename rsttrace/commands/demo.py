"""`rsttrace demo`: every root cause reproduced in a namespace lab, traced
live and diagnosed; exits non-zero when a diagnosis differs from the cause."""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from pathlib import Path

from rsttrace.cli import CLIError

EPILOG = """\
examples:
  sudo rsttrace demo                              every scenario, about a minute
  sudo rsttrace demo --scenario keepalive --scenario keepalive_fixed
  sudo rsttrace demo --keep                       leave the lab up to explore
  sudo rsttrace demo --down                       remove a kept (or stale) lab
  sudo rsttrace demo --vm --kernel 6.1            IPVS scenarios in a Debian 6.1 VM
  sudo rsttrace demo --vm --kernel 5.10           the same on Debian 11's 5.10
{scenarios}
"""


def _epilog() -> str:
    from rsttrace.lab.scenarios import SCENARIOS
    return EPILOG.format(scenarios=textwrap.fill(" ".join(SCENARIOS), width=78, initial_indent="scenarios: ",
                                                 subsequent_indent=" " * 11))


def register(sub) -> None:
    p = sub.add_parser("demo", help="reproduce every root cause in a namespace lab and diagnose it",
                       description="Build a Kubernetes-shaped lab in network namespaces (client pod, "
                                   "kube-proxy node, MariaDB pod), make real MySQL clients lose "
                                   "their connections for each root cause, trace it live and show "
                                   "what rsttrace concludes.",
                       epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", action="append", metavar="NAME",
                   help="run only this scenario (repeatable; default: all)")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--down", action="store_true", help="remove a kept or stale lab, then exit")
    p.add_argument("--csv", metavar="FILE.csv", help="report CSV (default ./rsttrace-demo.csv)")
    p.add_argument("--record", metavar="FILE.jsonl",
                   help="recording of the demo (default: next to the CSV)")
    p.add_argument("--vm", action="store_true",
                   help="run the IPVS scenarios in a VM booting a Debian kernel with IPVS and "
                        "kprobes (virtme-ng; for kernels without them, like this one may be)")
    from rsttrace.lab.vm import KERNEL_LINES   # stdlib only: cheap at start-up
    p.add_argument("--kernel", choices=tuple(KERNEL_LINES), default="6.12",
                   help="kernel line for --vm (default 6.12; 6.1 exercises the kprobe fallbacks, "
                        "5.10 also IPVS read from the kernel's headers)")
    p.set_defaults(run=run)


def _run_vm(args) -> int:
    import shlex
    import sys

    from rsttrace.lab import vm

    if args.scenario:
        from rsttrace.lab.ipvs import SCENARIOS
        bad = [n for n in args.scenario if n not in SCENARIOS]
        if bad:
            raise CLIError(f"unknown IPVS scenario {bad[0]!r} for --vm: choose from {', '.join(SCENARIOS)}")
    t0 = time.monotonic()
    try:
        print(f"rsttrace demo --vm: preparing Debian {args.kernel} (cached under {vm.CACHE})")
        k = vm.kernel_for(args.kernel, say=lambda m: print(f"  {m}"))
        print(f"booting {k.release} under virtme-ng (no KVM: BPF compiles take ~45 s in it)")
        cmd = " ".join(shlex.quote(x) for x in
                       [sys.executable, "-m", "rsttrace.lab.ipvs", *(args.scenario or [])])
        res = vm.run(k, cmd, stream=lambda line: None if line.startswith(("virtme", "fuse:"))
                     else print(line, end="", flush=True))
    except vm.VMError as e:
        raise CLIError(str(e)) from None
    for why in res.boot_failures:
        print(f"(booted again: {why})")
    print(f"{'all diagnoses match' if res.ok else 'a diagnosis differs'} on {k.release} "
          f"in {time.monotonic() - t0:.0f} s")
    return 0 if res.ok else 1


def _out_paths(args) -> tuple[Path, Path]:
    csv = Path(args.csv) if args.csv else Path.cwd() / "rsttrace-demo.csv"
    if not os.access(csv.parent if csv.parent != Path("") else Path.cwd(), os.W_OK):
        if args.csv:
            raise CLIError(f"cannot write {csv}: choose a writable path with --csv")
        csv = Path("/tmp/rsttrace-demo.csv")
    rec = Path(args.record) if args.record else csv.with_suffix(".jsonl")
    return csv, rec


def run(args) -> int:
    from rsttrace.lab import topology
    from rsttrace.lab.netns import LabError
    from rsttrace.lab.scenarios import SCENARIOS

    if os.geteuid() != 0:
        raise CLIError("the demo needs root (network namespaces, BPF): run `sudo rsttrace demo`")
    if args.vm:
        if args.down or args.keep:
            raise CLIError("--vm runs a throwaway VM: drop --keep/--down")
        return _run_vm(args)
    if args.down:
        try:
            said = topology.teardown()
        except LabError as e:
            raise CLIError(str(e)) from None
        print("removed: " + ", ".join(said) if said else "no lab was up")
        return 0
    names = args.scenario or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise CLIError(f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}")
    # Catalogue order: conntrack_full last, so its drops colour no other
    # scenario's resets in the shared recording.
    names = [n for n in SCENARIOS if n in names]
    csv, rec = _out_paths(args)

    from rsttrace.lab.demo import run_demo
    from rsttrace.outfile import OutputError

    def on_run(run, d) -> None:
        for e in sorted(set(run.errors)):
            n = sum(1 for x in run.errors if x == e)
            print(f"  client saw{f' ({n}x)' if n > 1 else ''}: {e}")
        if not run.errors:
            print(f"  client saw: no error ({len(run.flows)} connection(s) kept working)")
        mark = "ok" if d.ok else "MISMATCH"
        print(f"  rsttrace: {d.diagnosed} [{mark}] - {d.evidence}")
        if d.fix:
            print(f"  fix: {d.fix}")

    t0 = time.monotonic()
    print(f"rsttrace demo: {len(names)} scenario(s) in a namespace lab")
    try:
        res = run_demo(names, recording=rec, csv=csv, keep=args.keep, on_run=on_run)
    except (LabError, OutputError) as e:
        raise CLIError(str(e)) from None
    except Exception as e:  # the tracer's own start-up errors, worded for users
        if type(e).__name__ == "SessionError":
            raise CLIError(f"tracing could not start: {e} (see `rsttrace doctor`)") from None
        raise
    _table(res.diagnoses)
    print(f"recording: {res.recording}")
    print(f"report CSV: {res.csv}" if res.csv else "report CSV: not written (report module missing)")
    if args.keep:
        from rsttrace.lab.topology import read_state
        st = read_state()
        if st:
            print(f"lab kept up: {', '.join(st.namespaces)}; explore with e.g. "
                  f"`sudo rsttrace record -o x.jsonl --netns {st.namespaces[1]}`; "
                  "remove it with `sudo rsttrace demo --down`")
    bad = [d for d in res.diagnoses if not d.ok]
    print(f"{len(res.diagnoses) - len(bad)}/{len(res.diagnoses)} diagnoses match "
          f"in {time.monotonic() - t0:.0f} s")
    return 1 if bad else 0


def _table(diagnoses) -> None:
    widths = (24, 18, 18, 16)
    head = ("scenario", "expected", "diagnosed", "")
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for d in diagnoses:
        print("  ".join(c.ljust(w) for c, w in zip(
            (d.scenario, d.expected, d.diagnosed, "ok" if d.ok else "MISMATCH"), widths)).rstrip())
    print()
