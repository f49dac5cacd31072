"""`rsttrace fix` (alias `rsttrace --fix`): plan, confirm, apply, verify,
persist, and print how to undo; `--rollback` undoes the last applied plan."""

from __future__ import annotations

import argparse
import os
import sys

from rsttrace.cli import CLIError

EPILOG = """\
examples:
  sudo rsttrace --fix --dry-run                 the plan for this node, change nothing
  sudo rsttrace --fix                           watch 5 s, show the plan, ask, apply
  sudo rsttrace fix --from incident.jsonl --yes fix what a recording shows
  sudo rsttrace fix --netns cli --set net.ipv4.tcp_keepalive_time=120
  sudo rsttrace fix --rollback                  undo the last applied plan

Applied values persist in /etc/sysctl.d/99-rsttrace.conf (node) and
/etc/rsttrace/netns.d/NAME.conf (named namespaces, IPVS), re-applied at boot by
rsttrace-reapply.service (`rsttrace fix --reapply`). The journal of previous
values is /var/lib/rsttrace/journal.json; one run at a time changes anything
(the lock /var/lib/rsttrace/lock).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fix", help="apply the recommended fixes safely (alias: --fix)",
                       description="Plan the fixes for the resets seen (live or in a "
                       "recording) and for risky configuration, then apply them as a "
                       "transaction: journal, read-back, rollback on failure, persist.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.add_argument("-y", "--yes", action="store_true",
                   help="apply without asking (required when stdin is not a terminal)")
    p.add_argument("--from", dest="from_file", metavar="FILE.jsonl",
                   help="plan from a recording instead of watching live")
    p.add_argument("--observe", type=float, default=5.0, metavar="S",
                   help="seconds to watch live before planning (default 5; 0: configuration only)")
    p.add_argument("--netns", metavar="NAME|PID",
                   help="the namespace to fix (per-namespace values elsewhere are left alone)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="also set this value (in --netns, else on the node); repeatable")
    p.add_argument("--be-liberal", action="store_true",
                   help="allow nf_conntrack_tcp_be_liberal=1 (a trade-off: it stops "
                   "conntrack checking TCP windows)")
    p.add_argument("--persist", action=argparse.BooleanOptionalAction, default=True,
                   help="write the persisted files (default: yes)")
    p.add_argument("--rollback", action="store_true", help="undo the last applied plan")
    p.add_argument("--reapply", action="store_true",
                   help="set the persisted per-namespace and IPVS values again (boot time)")
    p.set_defaults(run=run)


def _parse_sets(items: list[str]) -> list[tuple[str, int]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out.append((key.strip(), int(value.strip())))
        except ValueError:
            raise CLIError(f"--set {item!r}: use KEY=INTEGER, e.g. "
                           "net.ipv4.tcp_keepalive_time=120") from None
        if not sep or not key.strip():
            raise CLIError(f"--set {item!r}: use KEY=INTEGER")
    return out


def _confirm(n: int) -> bool:
    try:
        answer = input(f"Apply these {n} change{'s' if n != 1 else ''}? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    from rsttrace.remedy.lock import LockHeld, fix_lock
    from rsttrace.remedy.paths import Paths

    if not (args.dry_run or args.yes or args.rollback or args.reapply or sys.stdin.isatty()):
        raise CLIError("stdin is not a terminal: pass --yes to apply without asking, "
                       "or --dry-run to only see the plan")
    if os.geteuid() != 0:
        raise CLIError("fixing needs root (it reads and writes sysctls in every "
                       "namespace): run it with sudo")
    paths = Paths.from_env()
    if args.dry_run and not (args.rollback or args.reapply):
        return _run(args, paths)
    # One run at a time may change the node and its journal; taken before
    # watching or planning, so a second run is turned away at once.
    try:
        with fix_lock(paths):
            return _run(args, paths)
    except LockHeld as e:
        raise CLIError(str(e)) from None


def _run(args: argparse.Namespace, paths) -> int:
    from rsttrace.remedy import keys as K
    from rsttrace.remedy.apply import (ApplyError, JournalError, apply_plan, load_journal,
                                       reapply, rollback_last)
    from rsttrace.remedy.handover import add_handovers
    from rsttrace.remedy.model import Proposal
    from rsttrace.remedy.model import RemedyError
    from rsttrace.remedy.netns import NetnsError, SystemAccess, resolve, self_target
    from rsttrace.remedy.planner import PlanOptions, make_plan
    from rsttrace.remedy.render import plan_text
    from rsttrace.remedy import sources
    from rsttrace.analysis.safe import printable
    from rsttrace.tracer.fsnames import text

    access = SystemAccess()
    try:
        if not args.dry_run:
            load_journal(paths)   # a damaged journal stops the run before anything else
    except JournalError as e:
        raise CLIError(str(e)) from None
    if args.rollback:
        try:
            out = rollback_last(access, paths)
        except ApplyError as e:
            print(f"rsttrace: {printable(e)}", file=sys.stderr)
            return 1
        for c in out.changes:
            print(f"restored {c.key}={c.old} in {printable(c.target.label)} (was {c.new})")
        for f in out.files:
            print(f"restored {printable(text(f))}")
        return 0
    if args.reapply:
        done, problems = reapply(access, paths)
        for d in done:
            print(f"set {printable(d)}")
        for p in problems:
            print(f"rsttrace: {printable(p)}", file=sys.stderr)
        return 1 if problems else 0
    if args.observe < 0:
        raise CLIError("--observe must be 0 or more seconds")
    sets = _parse_sets(args.sets)
    try:
        target = resolve(args.netns) if args.netns else None
    except NetnsError as e:
        raise CLIError(str(e)) from None
    node = self_target()
    ram = access.mem_total()

    if args.from_file:
        # streamed: a recording of any size plans in bounded memory
        import itertools

        from rsttrace.schema.recording import RecordingError, iter_recording
        reader, records = iter_recording(args.from_file)
        try:
            first = next(records, None)       # reads the header
            g = sources.from_records(itertools.chain([first] if first else [], records),
                                     reader.header or {}, node, ram)
        except RecordingError as e:
            raise CLIError(f"cannot read {args.from_file}: {e}") from None
        for w in reader.warnings:
            print(f"rsttrace: warning: {w}", file=sys.stderr)
        source = f"{g.resets} resets in {args.from_file}"
    elif args.observe > 0 and not sets:
        print(f"Watching for {args.observe:g} s ...", file=sys.stderr)
        g = sources.observe(args.observe, node, ram)
        source = f"{g.resets} resets in {args.observe:g} s and the configuration"
    elif not sets:
        g = sources.config_only(sources.Gathered(), node, ram, None)
        source = "the configuration"
    else:
        g = sources.Gathered()
        source = "--set"
    if g.causes:
        source += ": " + ", ".join(f"{k} {v}" for k, v in sorted(g.causes.items()))

    proposals = g.proposals
    notes = list(g.notes)
    if target is not None:
        keep = []
        for p in proposals:
            if K.spec_for(p.key).scope == "netns" and not p.target.same_ns(target):
                notes.append(f"{p.key}={p.value} in {p.target.label}: not the --netns "
                             f"target {target.label}, left alone")
            else:
                keep.append(p)
        proposals = keep
    for key, value in sets:
        proposals.append(Proposal(target or node, key, value, "", "manual", manual=True))

    opts = PlanOptions(allow_explicit={K.CT_BE_LIBERAL} if args.be_liberal else set())
    try:
        plan = make_plan(proposals, access, node, opts)
    except RemedyError as e:
        raise CLIError(str(e)) from None
    plan.handovers += g.handovers
    plan.skipped = notes + plan.skipped
    plan.warnings = g.warnings + plan.warnings
    add_handovers(plan)
    print(plan_text(plan, source))
    if plan.errors:
        return 1
    if not plan.changes:
        if target is not None and not g.resets and not sets:
            # nothing seen is not the same as nothing to fix
            print(f"\nNo reset seen in {printable(target.label)} and its configuration alone "
                  "asks for no change. If resets happened earlier, plan from their recording "
                  "(--from FILE.jsonl) or watch while they happen (--observe S).")
        else:
            print("\nNothing to do: every value is already what the fixes ask for.")
        return 0
    if args.dry_run:
        print("\nDry run: nothing was changed.")
        return 0
    if not args.yes and not _confirm(len(plan.changes)):
        print("Nothing was changed.")
        return 1
    try:
        out = apply_plan(plan, access, paths, persist_files=args.persist)
    except ApplyError as e:
        print(f"rsttrace: not applied: {printable(e)}", file=sys.stderr)
        return 1
    print()
    for c in out.changes:
        print(f"set {c.key}={c.new} in {printable(c.target.label)} (was {c.old}; read back)")
    for f in out.files:
        print(f"wrote {printable(text(f))}")
    for n in out.notes:
        print(f"note: {printable(n)}")
    print(f"Undo with: sudo rsttrace fix --rollback   (journal: {paths.journal})")
    return 0
