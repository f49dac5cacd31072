"""`rsttrace report`: a recording in, a postmortem out (CSV and summary)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  rsttrace report incident.jsonl                     summary on the terminal
  rsttrace report incident.jsonl -o resets.csv       one row per reset, cause, evidence, fix
  rsttrace report incident.jsonl -o r.csv --summary s.csv --cause keepalive
  rsttrace report incident.jsonl --since 2024-05-01T12:00:00Z --idle-timeout nlb=350
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="postmortem of a recording: CSV with cause and fix per reset",
                       description="Classify every reset of a recording (same classifier as the live "
                                   "screen) and write a CSV and a summary.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recording", metavar="FILE.jsonl", help="recording made by `rsttrace record`")
    p.add_argument("-o", "--output", metavar="FILE.csv", help="write one row per reset here")
    p.add_argument("--summary", metavar="FILE.csv", help="write the summary as CSV here")
    p.add_argument("--since", metavar="TIME", help="only resets at or after TIME (ISO 8601 or unix s)")
    p.add_argument("--until", metavar="TIME", help="only resets at or before TIME (ISO 8601 or unix s)")
    p.add_argument("--cause", metavar="CAUSE", help="only resets with this cause")
    p.add_argument("--window", type=float, default=10.0, metavar="SECONDS",
                   help="how far before a reset counters and log lines count (default 10)")
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
    from rsttrace.analysis.classify import CAUSES
    from rsttrace.analysis.report import parse_time, report_recording, write_csv, write_report
    from rsttrace.cli import CLIError
    from rsttrace.tracer.recording import RecordingError

    if args.cause is not None and args.cause not in CAUSES:
        raise CLIError(f"--cause {args.cause!r}: use one of {', '.join(CAUSES)}")
    if args.window <= 0:
        raise CLIError("--window must be a positive number of seconds")
    try:
        since, until = parse_time(args.since), parse_time(args.until)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if since is not None and until is not None and until < since:
        raise CLIError("--until is before --since: swap them")
    timeouts = parse_idle_timeouts(args.idle_timeout)
    opts = dict(window_s=args.window, idle_timeouts=timeouts, since=since, until=until, cause=args.cause)
    try:
        if args.output:
            n, summary = write_report(args.recording, args.output, **opts)
        else:
            df, summary = report_recording(args.recording, **opts)
        if args.summary:
            write_csv(summary.frame, args.summary)
    except RecordingError as e:
        raise CLIError(str(e)) from None
    except OSError as e:
        raise CLIError(f"cannot write {e.filename}: {e.strerror}; choose a writable path") from None
    for w in summary.warnings:
        print(f"rsttrace: warning: {w}", file=sys.stderr)
    if args.output:
        print(f"{n} resets -> {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(summary.text)
    return 0
