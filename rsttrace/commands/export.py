"""`rsttrace export`: a Prometheus exporter of resets by cause, conntrack
counters, TCP state transitions and the timeouts that matter.
Ctrl-C, SIGTERM or SIGHUP end it cleanly. Metrics: monitoring/README.md."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from rsttrace.cli import CLIError
from rsttrace.commands.record import add_storm_arg, storm_rate

DEFAULT_PORT = 9471   # kept equal to rsttrace.exporter.server.DEFAULT_PORT (a test checks)

EPILOG = f"""\
examples:
  sudo rsttrace export                          serve http://127.0.0.1:{DEFAULT_PORT}/metrics
  sudo rsttrace export --listen 10.0.0.5:{DEFAULT_PORT}    on the node's address, for a remote Prometheus
  sudo rsttrace export --port 3306 --netns-cap 20
  rsttrace export --replay incident.jsonl       the metrics of a recording (no root needed)

Prometheus scrape config:  - job_name: rsttrace
                             static_configs: [{{targets: ['127.0.0.1:{DEFAULT_PORT}']}}]
Alert rules and a Grafana dashboard: monitoring/ in the source tree.
"""


def register(sub) -> None:
    p = sub.add_parser("export", help="Prometheus exporter: resets by cause, conntrack, TCP states",
                       description="Serve Prometheus metrics: resets by cause, direction and namespace; "
                                   "conntrack entries, limit, drops and invalid per namespace; TCP state "
                                   "transitions counted in the kernel; keepalive and conntrack timeouts; "
                                   "lost events.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_live_args(p, f"127.0.0.1:{DEFAULT_PORT}")
    p.add_argument("--replay", metavar="FILE.jsonl", help="export a recording instead of the live kernel")
    p.add_argument("--speed", type=float, default=0.0, metavar="N",
                   help="with --replay: N times real time (default 0: as fast as possible)")
    p.add_argument("--quiet", "-q", action="store_true", help="no start-up line")
    p.set_defaults(run=run)


def add_live_args(p, listen: str) -> None:
    """The options `rsttrace export` and `rsttrace agent` share."""
    p.add_argument("--listen", default=listen, metavar="ADDR:PORT",
                   help=f"where to serve /metrics, /healthz and /readyz (default {listen}; "
                        "port 0: any free one)")
    p.add_argument("--node", metavar="NAME",
                   help="the `node` label of every series (default: $NODE_NAME, else the host name; "
                        "with --replay the recording's node, else its host)")
    p.add_argument("--port", type=int, action="append", metavar="P",
                   help="only resets involving TCP port P (repeatable)")
    p.add_argument("--netns", action="append", metavar="NAME|PID",
                   help="only this network namespace (repeatable)")
    p.add_argument("--netns-cap", type=int, default=50, metavar="N",
                   help="at most N namespaces get their own netns label; the rest count as "
                        "netns=\"other\" (default 50)")
    p.add_argument("--ctx-period", type=float, default=2.0, metavar="S",
                   help="conntrack and sysctl sampling period (default 2 s)")
    p.add_argument("--window", type=float, default=10.0, metavar="S",
                   help="how far before a reset counters count for its cause (default 10)")
    p.add_argument("--idle-timeout", action="append", default=[], metavar="NAME=SECONDS",
                   help="idle timeout of a middlebox on the path, e.g. nlb=350 (repeatable)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until a signal)")
    add_storm_arg(p)


def check_live_args(args) -> None:
    storm_rate(args)
    if args.netns_cap < 1:
        raise CLIError("--netns-cap must be at least 1")
    if args.ctx_period <= 0:
        raise CLIError("--ctx-period must be a positive number of seconds")
    if args.window <= 0:
        raise CLIError("--window must be a positive number of seconds")
    if args.duration is not None and args.duration <= 0:
        raise CLIError("--duration must be positive")
    if args.node is not None and not args.node.strip():
        raise CLIError("--node must not be empty")


def node_name(args) -> str:
    """--node, else $NODE_NAME (a DaemonSet sets it from spec.nodeName),
    else the host name."""
    import socket
    return args.node or os.environ.get("NODE_NAME", "").strip() or socket.gethostname()


def _check(args) -> None:
    check_live_args(args)
    if args.speed < 0:
        raise CLIError("--speed must be 0 (as fast as possible) or positive")
    if args.replay and (args.port or args.netns):
        raise CLIError("--port and --netns filter the live kernel; a --replay is exported as recorded")


def live_session(args, **kw):
    """The TraceSession of --port, --netns and --ctx-period (not started),
    after the checks a user can act on."""
    from rsttrace.commands.record import resolve_filters
    from rsttrace.tracer.session import SessionError, TraceSession, preflight
    try:
        preflight()
    except SessionError as e:
        raise CLIError(str(e)) from None
    ports, netns, names = resolve_filters(args)
    return TraceSession(ports=ports, netns=netns, ctx_period_s=args.ctx_period,
                        netns_names=names, storm_rate=storm_rate(args), **kw)


def _source(args):
    if args.replay:
        from rsttrace.tracer.replay import RecordingError, ReplaySource
        try:
            return ReplaySource(args.replay, speed=args.speed), None
        except FileNotFoundError:
            raise CLIError(f"--replay {args.replay}: no such file; give a recording "
                           "made by `rsttrace record`") from None
        except (RecordingError, OSError) as e:
            raise CLIError(f"--replay {args.replay}: {e}") from None
    from rsttrace.exporter.server import live_resolver
    return live_session(args), live_resolver


def exporter_options(args) -> dict:
    """The Exporter's options (besides its source) from the shared
    arguments, each checked: call it before anything is attached."""
    from rsttrace.commands.report import parse_idle_timeouts
    from rsttrace.exporter.server import ListenError, parse_listen
    try:
        listen = parse_listen(args.listen)
    except ListenError as e:
        raise CLIError(str(e)) from None
    return {"listen": listen, "netns_cap": args.netns_cap, "window_s": args.window,
            "idle_timeouts": parse_idle_timeouts(args.idle_timeout)}


def start_exporter(args, exporter) -> None:
    """exporter.start(), its failures as one line."""
    from rsttrace.tracer.session import SessionError
    try:
        exporter.start()
    except OSError as e:
        raise CLIError(f"cannot listen on {args.listen}: {e.strerror}; "
                       "choose another --listen ADDR:PORT") from None
    except SessionError as e:
        raise CLIError(str(e)) from None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run(args) -> int:
    from rsttrace.exporter.server import Exporter
    _check(args)
    options = exporter_options(args)
    source, resolver = _source(args)
    node = None if args.replay and not args.node else node_name(args)
    exporter = Exporter(source, resolver=resolver, node=node, **options)

    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in STOP_SIGNALS}
    try:
        start_exporter(args, exporter)
        if not args.quiet:
            # the URL on stdout (scripts read it when asking for port 0), the rest on stderr
            print(exporter.url, flush=True)
            print(f"rsttrace: exporting on {exporter.url}; Ctrl-C to stop", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        flushed = False
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - t0 >= args.duration:
                break
            if exporter.source_done:
                if not flushed:
                    exporter.finish()   # the recording ended: decide what is still open
                    flushed = True
                    for w in getattr(source, "warnings", ()):   # a replay: cut last line, invalid records
                        print(f"rsttrace: warning: {w}", file=sys.stderr, flush=True)
                stop.wait(0.2)          # keep serving the final values
                continue
            exporter.step(0.2)
    finally:
        exporter.stop()
        for s, h in old.items():
            signal.signal(s, h)
    return 0
