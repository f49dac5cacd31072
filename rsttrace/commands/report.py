"""`rsttrace report`: a recording in, a postmortem out (CSV and summary)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  rsttrace report incident.jsonl                     summary on the terminal
  rsttrace report incident.jsonl -o resets.csv       one row per reset, cause, evidence, fix
  rsttrace report incident.jsonl -o r.csv --summary s.csv --cause keepalive
  rsttrace report incident.jsonl --since 2024-05-01T12:00:00Z --idle-timeout nlb=350
  rsttrace report incident.jsonl -o - | less         the CSV on standard output
  rsttrace report a.jsonl b.jsonl -o f.csv           several nodes, both ends joined
  rsttrace report node-a/ node-b/ -o f.csv           directories of agent recordings

several recordings (or directories of the agent's rotated ones): each
node's recordings (by the header's node name) are read as one stream, the
nodes' streams merged in time order, and a reset received on one node is
joined with the reset another node sent for it (directly, or through that
node's NAT), or with that node's IPVS expiry of the flow or netfilter drop
of its packet, when exactly one
fits within --clock-tolerance: the received row takes the sender node's
cause and evidence; columns node and peer_node say where.

outputs: a new file or an existing regular file is written to a temporary
file beside it (mode 0600) and renamed into place when complete, so an
error, Ctrl-C, SIGTERM or SIGHUP leaves the old file as it was; a FIFO or a
character device (/dev/null) is written in place; `-` is standard output;
a symbolic link, or an output that is the recording itself, is refused.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="postmortem of a recording: CSV with cause and fix per reset",
                       description="Classify every reset of a recording (same classifier as the live "
                                   "screen) and write a CSV and a summary.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recording", metavar="FILE.jsonl", nargs="+",
                   help="recording made by `rsttrace record` (or the agent); several, or a directory of "
                        "them, make one report over their nodes")
    p.add_argument("-o", "--output", metavar="FILE.csv",
                   help="write one row per reset here (`-`: standard output)")
    p.add_argument("--summary", metavar="FILE.csv", help="write the summary as CSV here (`-`: standard output)")
    p.add_argument("--since", metavar="TIME", help="only resets at or after TIME (ISO 8601 or unix s)")
    p.add_argument("--until", metavar="TIME", help="only resets at or before TIME (ISO 8601 or unix s)")
    p.add_argument("--cause", metavar="CAUSE", help="only resets with this cause")
    p.add_argument("--window", type=float, default=10.0, metavar="SECONDS",
                   help="how far before a reset counters and log lines count (default 10)")
    p.add_argument("--clock-tolerance", type=float, default=None, metavar="SECONDS",
                   help="several nodes' recordings: how far apart their clocks may be for a reset "
                        "received on one to be joined with its sender on another (default 0.25)")
    p.add_argument("--idle-timeout", action="append", default=[], metavar="NAME=SECONDS",
                   help="idle timeout of a middlebox on the path, e.g. nlb=350 (repeatable)")
    p.set_defaults(run=run)


def parse_idle_timeouts(items: list[str]) -> dict[str, float]:
    from rsttrace.cli import CLIError
    out: dict[str, float] = {}
    for item in items:
        name, sep, val = item.partition("=")
        try:
            sec = float(val)
        except ValueError:
            sec = -1.0
        if not sep or not name or sec <= 0:
            raise CLIError(f"--idle-timeout {item!r}: write NAME=SECONDS with SECONDS > 0, e.g. nlb=350")
        out[name] = sec
    return out


def run(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from rsttrace.analysis.vocab import CAUSES
    from rsttrace.analysis.report import (parse_time, summarize_fleet, summarize_recording, write_fleet_report,
                                          write_report, write_summary)
    from rsttrace.analysis.summary import TimeRangeError
    from rsttrace.cli import CLIError
    from rsttrace.outfile import (OutFile, OutputClosed, OutputError, Say, check_distinct,
                                  exit_on_signals, exit_quietly, write_stdout)
    from rsttrace.schema.recording import RecordingError

    if args.cause is not None and args.cause not in CAUSES:
        raise CLIError(f"--cause {args.cause!r}: use one of {', '.join(CAUSES)}")
    if args.window <= 0:
        raise CLIError("--window must be a positive number of seconds")
    times = []
    for opt, text in (("--since", args.since), ("--until", args.until)):
        try:
            times.append(parse_time(text))
        except ValueError as e:
            raise CLIError(f"{opt}: {e}") from None
    since, until = times
    if since is not None and until is not None and until < since:
        raise CLIError("--until is before --since: swap them")
    timeouts = parse_idle_timeouts(args.idle_timeout)
    opts = dict(window_s=args.window, idle_timeouts=timeouts, since=since, until=until, cause=args.cause)
    say = Say()
    label = " ".join(args.recording)
    try:
        from rsttrace.analysis.fleet import CLOCK_TOLERANCE_S, expand
        paths = expand(args.recording)
        if len(paths) > 1 and "-" in paths:
            raise CLIError("- (standard input) is one recording: give several as files")
        fleet = len(paths) > 1
        if args.clock_tolerance is not None:
            if not fleet:
                raise CLIError("--clock-tolerance joins several nodes' recordings: give more than one")
            if not 0 <= args.clock_tolerance <= 10:
                raise CLIError("--clock-tolerance: give seconds from 0 to 10 (default 0.25)")
        if fleet:
            opts["tolerance_s"] = CLOCK_TOLERANCE_S if args.clock_tolerance is None else args.clock_tolerance
        label = paths[0] if not fleet else f"{len(paths)} recordings"
        check_distinct([("the recording", p) for p in paths],
                       [("-o", args.output), ("--summary", args.summary)])
        # TERM and HUP (an ssh hang-up) end it like Ctrl-C: the outputs'
        # temporary files go, the old files stay; status 128 + the signal.
        with exit_on_signals(), ExitStack() as outputs:
            # opened first: a refusal comes before the work, and a FIFO's
            # reader is waited for before it
            csv_out = outputs.enter_context(OutFile(args.output)) if args.output else None
            summary_out = outputs.enter_context(OutFile(args.summary)) if args.summary else None
            if csv_out is not None:
                n, summary = (write_fleet_report(paths, csv_out, **opts) if fleet
                              else write_report(paths[0], csv_out, **opts))
            else:
                summary = summarize_fleet(paths, **opts) if fleet else summarize_recording(paths[0], **opts)
            if summary_out is not None:
                write_summary(summary, summary_out)
        for w in summary.warnings:
            say(f"rsttrace: warning: {w}")
        if args.output:
            say(f"{n} resets -> {'standard output' if args.output == '-' else args.output}")
        elif args.summary != "-":
            write_stdout(summary.text)
    except RecordingError as e:
        raise CLIError(str(e)) from None
    except OutputClosed:
        return exit_quietly()
    except OutputError as e:
        raise CLIError(str(e)) from None
    except TimeRangeError as e:
        raise CLIError(f"{label}: {e}") from None
    except OSError as e:     # every output error is an OutputError: this is the reading
        raise CLIError(f"cannot read {label}: {e.strerror or e}") from None
    return 0
