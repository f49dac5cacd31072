"""`rsttrace record`: every reset and conntrack drop on the host, with
context, as JSON Lines. Ctrl-C, SIGTERM or SIGHUP (an ssh hang-up) end it
cleanly: every event held is written, then the totals line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from rsttrace.cli import CLIError

EPILOG = """\
examples:
  sudo rsttrace record -o incident.jsonl                 until Ctrl-C
  sudo rsttrace record -o db.jsonl --port 3306 --duration 600
  sudo rsttrace record -o pod.jsonl --netns 4242         one pod's namespace (PID or name)
  sudo rsttrace record -o x.jsonl --csv x.csv            also write the report when it ends
  sudo rsttrace record -o a.jsonl --node node-a          name the node (fleet reports join by it)

The recording (and --csv) is created with mode 0600: it holds process and pod
names and addresses. An existing recording at FILE.jsonl is replaced; any other
existing file only with --force; a symbolic link is refused. Ctrl-C, SIGTERM
and SIGHUP end the recording cleanly (held events written, totals line last);
nohup keeps SIGHUP ignored. A closed stderr only silences the progress lines.
"""


def register(sub) -> None:
    p = sub.add_parser("record", help="record resets, drops and context to JSONL",
                       description="Record every TCP reset and conntrack drop on the host, from "
                                   "every network namespace, with the context to explain it later.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, metavar="FILE.jsonl",
                   help="recording to write (an existing recording there is replaced)")
    p.add_argument("--force", action="store_true",
                   help="overwrite FILE.jsonl even if it exists and is not an rsttrace recording")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--port", type=int, action="append", metavar="P",
                   help="only resets involving port P (repeatable)")
    p.add_argument("--netns", action="append", metavar="NAME|PID",
                   help="only this network namespace (repeatable)")
    p.add_argument("--node", metavar="NAME",
                   help="the node's name in the recording's header (default: the host name); a report "
                        "over several nodes' recordings joins them by it")
    p.add_argument("--ctx-period", type=float, default=1.0, metavar="S",
                   help="context snapshot period (default 1 s)")
    p.add_argument("--csv", metavar="FILE.csv", help="write the report CSV when the recording ends")
    p.add_argument("--dump-bpf", action="store_true", help="print the BPF program and flags, then exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.add_argument("--transport", choices=("percpu", "ringbuf", "perfbuf"),
                   help="how events reach the recorder (default: the best this kernel has, "
                        "in that order; `rsttrace doctor` says which)")
    p.add_argument("--burst-buffer", type=int, default=None, metavar="MB",
                   help="while events arrive faster than --burst-rate, keep up to MB of them raw "
                        "(232 bytes each, in an unlinked file beside the output) and write them "
                        "as JSON text once the rate falls or the recording ends, so the recorder "
                        "takes less CPU from a host in a reset storm (default 1024; 0: write "
                        "every event as it comes)")
    p.add_argument("--burst-rate", type=int, default=None, metavar="EVENTS",
                   help="events per second above which they are held (default 20000)")
    add_storm_arg(p)
    p.add_argument("--accept-syscalls", action="store_true",
                   help="where no fexit program can learn an accepted socket's owner, learn it "
                        "from the accept() syscall tracepoints (turns on syscall tracing: every "
                        "syscall on the host gets slower; `rsttrace doctor` says which applies)")
    p.set_defaults(run=run)


def add_storm_arg(p) -> None:
    """--storm-rate, for every command that traces the live kernel."""
    from rsttrace.tracer.storm import STORM_RATE
    p.add_argument("--storm-rate", type=int, default=None, metavar="RESETS",
                   help="storm mode: above RESETS resets per second on a CPU, count them in the "
                        "kernel per key (namespace, direction, reason, state, addresses, service "
                        f"port, SYN) with a sample in full (default {STORM_RATE}; 0: every reset "
                        "in full)")


def storm_rate(args) -> int | None:
    """--storm-rate checked (None: the default)."""
    rate = getattr(args, "storm_rate", None)
    if rate is not None and rate < 0:
        raise CLIError("--storm-rate must be 0 (every reset in full) or a rate in resets per second")
    return rate


def resolve_filters(args) -> tuple[list[int] | None, list[int] | None, dict[int, str]]:
    ports = args.port
    for p in ports or []:
        if not 0 < p < 65536:
            raise CLIError(f"--port {p}: not a TCP port (1-65535)")
    netns, names = None, {}
    if args.netns:
        from rsttrace.tracer.context import ContextError, resolve_netns
        netns = []
        for spec in args.netns:
            try:
                ns = resolve_netns(spec)
            except ContextError as e:
                raise CLIError(str(e)) from None
            netns.append(ns.inode)
            names[ns.inode] = ns.name
    return ports, netns, names


def run(args) -> int:
    from rsttrace.outfile import NotReplaceable, OutputError, check_distinct
    from rsttrace.schema.recording import open_output
    from rsttrace.tracer.session import SessionError, preflight

    if args.dump_bpf:
        return dump_bpf(args)
    # Everything a user can fix is checked before anything is attached.
    storm_rate(args)
    try:
        preflight()
    except SessionError as e:
        raise CLIError(str(e)) from None
    ports, netns, names = resolve_filters(args)
    if args.node is not None and (not args.node.strip() or not args.node.isprintable()):
        raise CLIError("--node: give a printable name, e.g. the Kubernetes node's name")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.lexists(args.output) and (not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK)):
        raise CLIError(f"cannot write {args.output}: {out_dir} is not a writable directory")
    if args.duration is not None and args.duration <= 0:
        raise CLIError("--duration must be positive")
    from rsttrace.tracer.burst import DEFAULT_MAX_MB, HOLD_RATE
    burst_mb = DEFAULT_MAX_MB if args.burst_buffer is None else args.burst_buffer
    burst_rate = HOLD_RATE if args.burst_rate is None else args.burst_rate
    if burst_mb < 0:
        raise CLIError("--burst-buffer must be 0 (never hold events) or a size in MB")
    if burst_rate <= 0:
        raise CLIError("--burst-rate must be a positive number of events per second")
    try:
        check_distinct([], [("-o", args.output), ("--csv", args.csv)])
        out = open_output(args.output, force=args.force)
    except NotReplaceable as e:
        raise CLIError(f"{e}: record to another file, or add --force to overwrite it") from None
    except OutputError as e:
        raise CLIError(str(e)) from None
    if args.csv and not out.regular:
        out.discard()
        raise CLIError(f"--csv reads the recording back when it ends: -o {args.output} must be a file")
    if not out.regular:
        # a FIFO or /dev/null: held events go to the temporary directory,
        # not beside a device node
        import tempfile
        out_dir = tempfile.gettempdir()
    try:
        return _record(args, out, out_dir, ports, netns, names, burst_mb, burst_rate)
    except OutputError as e:
        raise CLIError(str(e)) from None


def _record(args, out, out_dir, ports, netns, names, burst_mb, burst_rate) -> int:
    from rsttrace.outfile import Say
    from rsttrace.tracer.burst import BurstWriter
    from rsttrace.schema.recording import RecordingWriter
    from rsttrace.tracer.session import SessionError, TraceSession

    say = Say()
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()
    # SIGHUP is how an ssh hang-up ends the recorder: as cleanly as Ctrl-C.
    # One ignored from the start (nohup) stays ignored.
    stops = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        stops.append(signal.SIGHUP)
    old = {s: signal.signal(s, on_signal) for s in stops}
    session = TraceSession(ports=ports, netns=netns, ctx_period_s=args.ctx_period,
                           netns_names=names, transport=args.transport,
                           accept_syscalls=args.accept_syscalls, node=args.node,
                           storm_rate=storm_rate(args))
    writer = burst = None
    t0 = time.monotonic()
    try:
        try:
            session.start()
        except SessionError as e:
            raise CLIError(str(e)) from None
        writer = RecordingWriter(out, session.header)
        missing = [f"{k} ({h['why']})" for k, h in session.header["plan"].items() if not h["available"]]
        if not args.quiet:
            say(f"rsttrace: recording to {args.output} (attached in {session.attach_s:.2f} s, "
                f"{session.transport}); Ctrl-C to stop")
            for m in missing:
                say(f"rsttrace: unavailable: {m}")
        last_print = 0.0
        # the hot path: raw events straight to JSON text (no dicts), or held
        # raw while they come in a burst
        burst = BurstWriter(writer, session.decoder, out_dir, max_bytes=burst_mb << 20,
                            rate=burst_rate)

        def drain(timeout: float) -> None:
            burst.write(*session.poll_raw(timeout))

        progress = not args.quiet and sys.stderr.isatty()
        while not stop.is_set():
            drain(0 if burst.catching_up else 0.1)
            now = time.monotonic()
            if args.duration is not None and now - t0 >= args.duration:
                break
            if progress and not say.broken and now - last_print > 1:
                st = session.stats()
                holding = f", {burst.held} held (burst)" if burst.held else ""
                say(f"\r{st['events']} events, {st['lost']} lost{holding}, {now - t0:.0f} s ", end="")
                last_print = now
        # last events still in the buffer, storm mode's last counts, then a
        # final context snapshot
        drain(0)
        session.flush_storms()
        try:
            session.snapshot()
        except Exception:
            pass
        drain(0)
    finally:
        if writer is None:
            out.discard()     # not started: a file made for it goes again
        stats = session.stats() if session.running else {"events": 0, "lost": 0}
        session.stop()
        try:
            if burst is not None:
                if burst.held and not args.quiet:
                    say(f"\nrsttrace: writing {burst.held} events held during a burst")
                burst.finish()
        finally:
            if writer is not None:
                held = {} if burst is None else {"burst_held": burst.deferred,
                                                 "burst_peak_mb": round(burst.peak_bytes / 2**20, 1)}
                if burst is not None and burst.note:
                    held["burst_note"] = burst.note
                    say(f"\nrsttrace: {burst.note}")
                writer.close({"t": round(time.time(), 6), "lost": stats["lost"],
                              "kernel_events": stats["events"], "rescued": stats.get("rescued", 0),
                              "duration_s": round(time.monotonic() - t0, 3), **held})
        for s, h in old.items():
            signal.signal(s, h)
    if not args.quiet:
        say(f"\nrsttrace: {writer.count} events, {stats['lost']} lost -> {args.output}")
    if args.csv:
        return write_csv(args.output, args.csv, say)
    return 0


def write_csv(recording: str, csv_path: str, say) -> int:
    from rsttrace.analysis.report import write_report
    from rsttrace.outfile import OutFile, OutputClosed, OutputError, exit_on_signals, exit_quietly
    from rsttrace.schema.recording import RecordingError
    try:
        # TERM or HUP now ends the report like Ctrl-C: its temporary file goes
        with exit_on_signals(), OutFile(csv_path) as out:
            rows, _summary = write_report(recording, out)
    except OutputClosed:
        return exit_quietly()
    except (OutputError, RecordingError) as e:
        raise CLIError(f"{e} (the recording {recording} is complete)") from None
    say(f"rsttrace: report -> {csv_path} ({rows} rows)")
    return 0


def dump_bpf(args) -> int:
    from rsttrace.tracer import probe
    from rsttrace.tracer.loader import LoadError, build
    from rsttrace.tracer.storm import STORM_RATE
    rate = storm_rate(args)
    ports, netns, _ = resolve_filters(args)
    caps = probe.probe()
    caps.accept_syscalls = args.accept_syscalls
    hooks = probe.plan(caps)
    try:
        prog = build(caps, hooks, probe.transport(caps)[0], ports, netns,
                     storm_rate=STORM_RATE if rate is None else rate)
    except LoadError as e:
        raise CLIError(str(e)) from None
    print("// cflags: " + " ".join(prog.cflags))
    for k, v in sorted(prog.layout.sources.items()):
        print(f"//   {k} = {prog.layout.defines[k]}  ({v})")
    print(prog.text)
    return 0
