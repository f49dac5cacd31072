"""`rsttrace live`: the live incident screen (also what `rsttrace` runs on a terminal)."""

from __future__ import annotations

import argparse

from rsttrace.cli import CLIError
from rsttrace.commands.record import add_storm_arg, storm_rate

EPILOG = """\
examples:
  sudo rsttrace                              every reset on this node, live
  sudo rsttrace --port 3306 --netns lb       only MySQL resets seen in netns lb
  sudo rsttrace --record incident.jsonl      watch and keep a recording
  rsttrace live --replay incident.jsonl --speed 10   postmortem at 10x
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("live", help="live screen of every reset, its cause and fix",
                       description="Live screen: resets with cause and fix, conntrack gauges, "
                                   "timeouts. Keys: p pause, / filter, c cause, e export, "
                                   "f fix plan, ? help, q quit.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, action="append", metavar="P",
                   help="only resets on this port (repeatable)")
    p.add_argument("--netns", action="append", metavar="NAME|PID",
                   help="only this network namespace (name from `ip netns list` or a PID; repeatable)")
    add_storm_arg(p)
    p.add_argument("--record", metavar="FILE.jsonl", help="also record everything to this file")
    p.add_argument("--replay", metavar="FILE.jsonl", help="replay a recording instead of tracing")
    p.add_argument("--speed", type=float, default=1.0, metavar="N",
                   help="replay speed: 1 real time, 10 ten times faster, 0 as fast as possible")
    p.add_argument("--keep", type=int, default=5000, metavar="N",
                   help="resets kept in memory for the table and export (default 5000)")
    p.add_argument("--export-dir", default=".", metavar="DIR", help="where `e` writes its CSV")
    p.add_argument("--utc", action="store_true", help="show times in UTC instead of local time")
    p.set_defaults(run=run)


def _check(args: argparse.Namespace) -> None:
    for port in args.port or []:
        if not 0 < port < 65536:
            raise CLIError(f"--port {port}: give a TCP port between 1 and 65535")
    storm_rate(args)
    if args.keep < 1:
        raise CLIError(f"--keep {args.keep}: keep at least 1 reset in memory")
    if args.speed < 0:
        raise CLIError(f"--speed {args.speed}: use 0 (as fast as possible) or a positive factor")
    if args.replay == "-":
        raise CLIError("--replay -: the live screen reads its keys from standard input; "
                       "give the recording as a file (rsttrace report - reads standard input)")
    if args.replay and (args.record or args.port or args.netns):
        raise CLIError("--replay shows a recording as it was: drop --record/--port/--netns "
                       "(filter on screen with /)")


def _replay_source(args: argparse.Namespace):
    from rsttrace.schema.recording import RecordingError
    from rsttrace.tracer.replay import ReplaySource
    try:
        return ReplaySource(args.replay, speed=args.speed)
    except RecordingError as e:
        raise CLIError(str(e)) from None


def _live_source(args: argparse.Namespace):
    from rsttrace.tracer.context import ContextError, resolve_netns
    from rsttrace.tracer.session import SessionError, TraceSession
    try:
        nss = [resolve_netns(s) for s in args.netns or []]
    except ContextError as e:
        raise CLIError(str(e)) from None
    session = TraceSession(ports=args.port or None, netns=[n.inode for n in nss] or None,
                           netns_names={n.inode: n.name for n in nss}, storm_rate=storm_rate(args))
    try:
        session.start()
    except SessionError as e:
        session.stop()
        raise CLIError(str(e)) from None
    return session


def run(args: argparse.Namespace) -> int:
    _check(args)
    from datetime import timezone

    from rsttrace.analysis.classify import Classifier
    from rsttrace.tui.app import RstApp
    from rsttrace.tui.apply import remedy_applier

    recorder = None
    if args.replay:
        source = _replay_source(args)
        label = f"replay {args.replay} ×{args.speed:g}" if args.speed else f"replay {args.replay}"
    else:
        source = _live_source(args)
        label = "live"
        if args.record:
            from rsttrace.outfile import OutputError
            from rsttrace.schema.recording import RecordingWriter
            try:
                recorder = RecordingWriter(args.record, source.header)
            except OutputError as e:
                source.stop()
                raise CLIError(f"--record: {e}; choose another path") from None
            label = f"live, recording {args.record}"
    apply_fn, why_not = remedy_applier() if not args.replay else (None, "replaying a recording")
    classifier = Classifier(netns_names=source.header.get("netns_names") or {})
    app = RstApp(source, classifier, capacity=args.keep, recorder=recorder,
                 tz=timezone.utc if args.utc else None, export_dir=args.export_dir,
                 source_label=label, apply_fixes=apply_fn, apply_unavailable=why_not)
    try:
        code = app.run()
    finally:
        app.shutdown()
    if args.replay:
        import sys
        for w in source.warnings:   # cut last line, records that did not validate
            print(f"rsttrace: warning: {w}", file=sys.stderr)
    if recorder is not None:
        try:
            print(f"rsttrace: recording written to {args.record}")
        except OSError:
            pass    # the terminal went away (SIGHUP): the recording is complete all the same
    return code if isinstance(code, int) else 0
