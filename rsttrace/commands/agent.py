"""`rsttrace agent`: the node agent a DaemonSet runs. One trace session
feeds the Prometheus exporter (with /healthz and /readyz), a flight
recorder of rotating recordings and one JSON line per classified reset on
stdout. SIGTERM, SIGINT or SIGHUP end it with every recording complete."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time

from rsttrace.cli import CLIError
from rsttrace.commands.export import (DEFAULT_PORT, STOP_SIGNALS, add_live_args, check_live_args,
                                      exporter_options, live_session, node_name, start_exporter)

DEFAULT_DIR = "/var/lib/rsttrace"
# at a signal, the backlog of a storm is classified for this long at most
# (the rest is still recorded): well inside Kubernetes' default 30 s grace
SHUTDOWN_BUDGET_S = 10.0

EPILOG = f"""\
examples:
  sudo rsttrace agent                             metrics on 0.0.0.0:{DEFAULT_PORT}, recordings in {DEFAULT_DIR}
  sudo rsttrace agent --listen 127.0.0.1:{DEFAULT_PORT} --record-dir /tmp/rt --record-max-mb 100
  sudo rsttrace agent --record-max-mb 0           no flight recorder
  rsttrace report {DEFAULT_DIR}/rsttrace-20260101T120000Z.jsonl   a postmortem of one file
  rsttrace report {DEFAULT_DIR} other-node/       every file, and other nodes' joined

endpoints:  /metrics  Prometheus (every series labelled node)
            /healthz  200 while the polling loop runs
            /readyz   200 once BPF is attached and the first context snapshot is taken
stdout:     one JSON line per classified reset (README: agent); messages go to stderr
"""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, flag: str) -> float:
    """'90', '90s', '30m', '6h', '2d' -> seconds."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise CLIError(f"{flag} {text!r}: write a positive duration, e.g. 90s, 30m, 6h or 2d")
    return float(m.group(1)) * _UNIT[m.group(2)]


def register(sub) -> None:
    p = sub.add_parser("agent", help="node agent: exporter, flight recorder, JSON log of resets",
                       description="The node agent (a DaemonSet's process): Prometheus metrics with "
                                   "health endpoints, rotating recordings of the last hours for "
                                   "postmortems, and one JSON line per classified reset on stdout.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_live_args(p, f"0.0.0.0:{DEFAULT_PORT}")
    g = p.add_argument_group("flight recorder")
    g.add_argument("--record-dir", default=DEFAULT_DIR, metavar="DIR",
                   help=f"where the recordings go (default {DEFAULT_DIR}; created 0700; refused "
                        "when others may write it)")
    g.add_argument("--record-max-mb", type=int, default=512, metavar="MB",
                   help="the recordings together at most this size: the oldest are removed "
                        "(default 512; 0: no flight recorder)")
    g.add_argument("--record-max-age", default="24h", metavar="AGE",
                   help="recordings whose last write is older are removed (default 24h; "
                        "units s, m, h, d)")
    g.add_argument("--rotate-mb", type=int, default=32, metavar="MB",
                   help="a recording is ended and a new one started past this size (default 32)")
    g.add_argument("--rotate-every", default="1h", metavar="AGE",
                   help="... or this long after it started (default 1h)")
    g = p.add_argument_group("log")
    g.add_argument("--log-rate", type=int, default=1000, metavar="N",
                   help="at most N reset lines a second on stdout; past that one line a second "
                        "counts the rest by cause (default 1000; 0: no limit)")
    p.set_defaults(run=run)


def _limits(args):
    from rsttrace.exporter.flight import Limits
    if args.record_max_mb < 0:
        raise CLIError("--record-max-mb must be 0 (no flight recorder) or a size in MB")
    if args.rotate_mb < 1:
        raise CLIError("--rotate-mb must be at least 1")
    if args.record_max_mb and args.rotate_mb * 2 > args.record_max_mb:
        raise CLIError(f"--rotate-mb {args.rotate_mb} must be at most half of --record-max-mb "
                       f"{args.record_max_mb}, so that older recordings are kept while a new one grows")
    return Limits(max_bytes=args.record_max_mb << 20,
                  max_age_s=parse_duration(args.record_max_age, "--record-max-age"),
                  file_bytes=args.rotate_mb << 20,
                  file_s=parse_duration(args.rotate_every, "--rotate-every"))


def say(msg: str) -> None:
    print(f"rsttrace: {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    from rsttrace.exporter.flight import FlightRecorder, RecordDirError, prepare_dir
    from rsttrace.exporter.server import Exporter, live_resolver
    from rsttrace.exporter.verdictlog import LineWriter, VerdictLog

    # everything a user can fix is checked before anything is attached
    check_live_args(args)
    if args.log_rate < 0:
        raise CLIError("--log-rate must be 0 (no limit) or a number of lines a second")
    limits = _limits(args)
    options = exporter_options(args)
    node = node_name(args)
    directory = None
    if limits.max_bytes:
        try:
            directory = prepare_dir(args.record_dir)
        except RecordDirError as e:
            raise CLIError(str(e)) from None
    session = live_session(args)
    # the backlog of a storm waits beside the recordings (it is capped too)
    exporter = Exporter(session, resolver=live_resolver, node=node,
                        backlog_dir=str(directory) if directory is not None else None, **options)

    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in STOP_SIGNALS}
    flight = log = None
    try:
        start_exporter(args, exporter)
        writer = LineWriter(sys.stdout.fileno(), node=node)
        # names as the metrics' netns labels have them, asked of the host
        # for a namespace no context snapshot has named yet
        log = VerdictLog(writer, node, exporter.state.labels.name, rate=args.log_rate)
        exporter.verdict_sinks.append(log)
        if directory is not None:
            header = {**session.header, "node": node}
            flight = FlightRecorder(directory, header, session.decoder, limits,
                                    stats=exporter.stats, on_error=say)
            exporter.raw_sinks.append(flight)
        where = f", recording to {directory}" if directory is not None else ", no flight recorder"
        say(f"agent on node {node}: {exporter.url} (attached in {session.attach_s:.2f} s, "
            f"{session.transport}){where}")
        for k, h in session.header["plan"].items():
            if not h["available"]:
                say(f"unavailable: {k} ({h['why']})")
        t0 = time.monotonic()
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - t0 >= args.duration:
                break
            exporter.step(0.2)
        # what is still in the kernel's buffer, storm mode's last counts,
        # the backlog, then every open incident
        exporter.step(0)
        session.flush_storms()
        exporter.step(0)
        exporter.drain(SHUTDOWN_BUDGET_S)
    finally:
        try:
            if flight is not None:
                flight.close()
            if exporter.state is not None:
                exporter.finish()
        finally:
            exporter.stop()
            if log is not None:
                log.close()
            for s, h in old.items():
                signal.signal(s, h)
    return 0
