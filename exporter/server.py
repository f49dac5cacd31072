"""The exporter's loop: poll the source, count, serve /metrics over HTTP.

The source is a live `TraceSession` or a `ReplaySource` (same methods).
Polling and classification run in the caller's thread; the HTTP server
(exporter/http.py: bounded in connections and time) runs in its own
threads and only reads a copy of the state (and the kernel's counter maps)
when scraped.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from rsttrace.analysis.classify import Classifier, Verdict
from rsttrace.analysis.pump import clock_of
from rsttrace.tracer.session import release_heap

from .backlog import Backlog
from .collector import RsttraceCollector
from .http import HTTPServer, Response, text
from .netns import NetnsLabels
from .state import ExportState

# Not one of the ports registered for other exporters; loopback by default,
# since the metrics name the host's namespaces and sysctls.
DEFAULT_PORT = 9471


class ListenError(ValueError):
    pass


def parse_listen(text: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[V6ADDR]:PORT` or `PORT` (loopback) -> (addr, port)."""
    text = text.strip()
    hint = "write ADDR:PORT, e.g. 127.0.0.1:9471 or [::1]:9471 (0.0.0.0:9471 for every interface)"
    if text.isdigit():
        addr, port_s = "127.0.0.1", text
    elif text.startswith("["):
        addr, sep, port_s = text[1:].partition("]:")
        if not sep:
            raise ListenError(f"--listen {text!r}: {hint}")
    else:
        addr, sep, port_s = text.rpartition(":")
        if not sep or not addr or ":" in addr:
            raise ListenError(f"--listen {text!r}: {hint}")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise ListenError(f"--listen {text!r}: {addr!r} is not an IP address; {hint}") from None
    if not port_s.isdigit() or not 0 <= int(port_s) < 65536:
        raise ListenError(f"--listen {text!r}: port must be 0-65535 (0: any free port); {hint}")
    return addr, int(port_s)


def live_resolver(ino: int) -> str | None:
    """Name of a namespace an event came from before any ctx named it."""
    from rsttrace.tracer.context import list_namespaces
    ns = list_namespaces().get(ino)
    return ns.name if ns else None


# Open incidents at most. An open incident and its two records take about
# 2.3 KB (tracemalloc, a storm replayed): 5,000 are some 12 MB. A storm
# faster than 5,000 incidents a second has its incidents decided before the
# full pair window; their halves came microseconds apart (NAT-paired ones
# within NAT_WINDOW_S), so only the wait for a fresher context snapshot
# (every --ctx-period) is cut short. Measured on the replay of a real
# 200,000-reset storm: peak +19 MiB over the start, 7 MiB left after,
# against +37 to +42 and 15 with 20,000.
MAX_PENDING = 5_000
# /healthz fails when the polling loop has not come round for this long (a
# poll takes at most a fraction of a second, a start some seconds)
STALL_S = 30.0
# raw events decoded into records at most this many at a time
DECODE_CHUNK = 2048
# classification time per poll; what the kernel gave beyond waits in the
# backlog, so the rings are drained at least this often however fast
# resets come
STEP_BUDGET_S = 0.05
# after this many verdicts, the heap is given back at the first quiet poll
# (fewer than QUIET verdicts)
RELEASE_AFTER = 1000
QUIET = 100

INDEX = """rsttrace exporter
/metrics  Prometheus metrics
/healthz  200 while the polling loop runs
/readyz   200 once the BPF programs are attached and a context snapshot is taken
"""


class Exporter:
    """Polls a source, counts what it gives and serves the counts.

    `raw_sinks` get the raw events (a chunk at a time) and the context
    records after them as they are classified, in the kernel's order (the
    agent's flight recorder); `verdict_sinks` each step's verdicts (the
    agent's log lines)."""

    def __init__(self, source: Any, listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT),
                 netns_cap: int = 50, window_s: float = 10.0,
                 idle_timeouts: dict[str, float] | None = None, resolver=None,
                 node: str | None = None, backlog_dir: str | None = None):
        self.source = source
        self.listen = listen
        self.netns_cap = netns_cap
        self.window_s = window_s
        self.idle_timeouts = idle_timeouts or {}
        self.resolver = resolver
        self.node = node
        self.state: ExportState | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.raw_sinks: list[Any] = []
        # raw events read and not yet classified (a live source only)
        self.backlog: Backlog | None = None
        self.backlog_dir = backlog_dir
        self.verdict_sinks: list[Callable[[list[Verdict]], None]] = []
        self._httpd: HTTPServer | None = None
        self._beat = time.monotonic()
        self._stopped = False
        self._since_release = 0     # verdicts since the heap was last released
        self.scrape_errors: list[str] = []

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens (the real port when 0 was asked)."""
        assert self._httpd is not None, "exporter not started"
        return self._httpd.address

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"

    def start(self) -> "Exporter":
        """Listen first (a port taken fails before anything is attached, and
        /healthz answers while the programs load), then start the source."""
        addr, port = self.listen
        self._httpd = HTTPServer(addr, port, {
            "/": lambda: text(200, INDEX), "/metrics": self._metrics,
            "/healthz": self._healthz, "/readyz": self._readyz}).start()
        self._beat = time.monotonic()
        try:
            self.source.start()
        except BaseException:
            self._httpd.stop()
            self._httpd = None
            raise
        header = dict(self.source.header)
        names = header.get("netns_names") or {}
        classifier = Classifier(window_s=self.window_s, idle_timeouts=self.idle_timeouts,
                                netns_names=names, max_pending=MAX_PENDING)
        labels = NetnsLabels(cap=self.netns_cap, names=names, resolver=self.resolver)
        state = ExportState(classifier, labels, header, node=self.node, clock=clock_of(self.source))
        if getattr(self.source, "poll_raw", None) is not None:
            self.backlog = Backlog(self.backlog_dir)
        self.registry.register(RsttraceCollector(state, self, on_error=lambda e: self._note(repr(e))))
        self.state = state
        self._beat = time.monotonic()
        return self

    # -- HTTP routes (the server's threads) ---------------------------------
    def _metrics(self) -> Response:
        if self.state is None:
            return text(503, "starting: the BPF programs are being loaded\n")
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def alive(self) -> bool:
        return not self._stopped and time.monotonic() - self._beat < STALL_S

    def ready(self) -> bool:
        return (self.alive() and self.state is not None and self.state.has_ctx
                and bool(getattr(self.source, "running", True)))

    def _healthz(self) -> Response:
        if self.alive():
            return text(200, "ok\n")
        return text(503, f"the polling loop has not run for {time.monotonic() - self._beat:.0f} s\n")

    def _readyz(self) -> Response:
        if self.ready():
            return text(200, "ready\n")
        why = ("the polling loop is stuck" if not self.alive()
               else "the BPF programs are being loaded" if self.state is None
               else "waiting for the first context snapshot")
        return text(503, f"not ready: {why}\n")

    def _note(self, err: str) -> None:
        if len(self.scrape_errors) < 100:
            self.scrape_errors.append(err)

    # -- the polling loop ----------------------------------------------------
    def step(self, timeout_s: float = 0.2) -> list[Verdict]:
        """One poll of the source; returns the verdicts decided."""
        state = self.state
        assert state is not None, "exporter not started"
        if self.backlog is None:
            verdicts = state.ingest(self.source.poll(timeout_s))
        else:
            verdicts = self._step_raw(timeout_s)
        if not self.backlog:
            # behind, time is the stream's own (the classifier's): a reset
            # waiting in the backlog has not missed its other half
            verdicts += state.tick()
        for out in self.verdict_sinks:
            out(verdicts)
        self._since_release += len(verdicts)
        if len(verdicts) < QUIET and self._since_release >= RELEASE_AFTER and not self.backlog:
            # a burst is over (this poll was quiet): its records are freed
            release_heap()
            self._since_release = 0
        self._beat = time.monotonic()
        return verdicts

    def _step_raw(self, timeout_s: float) -> list[Verdict]:
        """Drain the kernel's rings, classify for STEP_BUDGET_S at most,
        and keep the rest in the backlog (exporter/backlog.py)."""
        backlog = self.backlog
        arr, ctx = self.source.poll_raw(0 if backlog else timeout_s)
        deadline = time.monotonic() + STEP_BUDGET_S
        verdicts: list[Verdict] = []
        if backlog:
            backlog.put(arr, ctx)
        else:
            i = 0
            while i < len(arr) and time.monotonic() < deadline:
                verdicts += self._process(arr[i:i + DECODE_CHUNK], [])
                i += DECODE_CHUNK
            if i < len(arr):
                backlog.put(arr[i:], ctx)
            elif ctx:
                verdicts += self._process(arr[:0], ctx)
        while backlog and time.monotonic() < deadline:
            verdicts += self._process(*backlog.take(DECODE_CHUNK))
        return verdicts

    def _process(self, arr, ctx: list[dict]) -> list[Verdict]:
        """A chunk of raw events and the context records after it: to the
        raw sinks, then decoded and counted (the records of one chunk are
        all that exist at once)."""
        for sink in self.raw_sinks:
            sink.write(arr, ctx)
        verdicts = self.state.ingest(self.source.decoder.decode_array(arr)) if len(arr) else []
        if ctx:
            verdicts += self.state.ingest(ctx)
        return verdicts

    def drain(self, budget_s: float) -> list[Verdict]:
        """Classify what waits in the backlog for `budget_s` at most; what
        is left then still goes to the raw sinks (the flight recorder), so
        a recording ends complete however far behind the classifier was."""
        verdicts: list[Verdict] = []
        backlog = self.backlog
        if not backlog:
            return verdicts
        deadline = time.monotonic() + budget_s
        while backlog and time.monotonic() < deadline:
            verdicts += self._process(*backlog.take(DECODE_CHUNK))
        while backlog:
            arr, ctx = backlog.take(1 << 16)
            for sink in self.raw_sinks:
                sink.write(arr, ctx)
        for out in self.verdict_sinks:
            out(verdicts)
        return verdicts

    # -- what the kernel counted, with the backlog (the collector's source) ---
    def stats(self) -> dict[str, int]:
        """The source's counts; events dropped from a full backlog are lost
        too, and those waiting in it are the `backlog`."""
        st = dict(self.source.stats())
        if self.backlog is not None:
            st["lost"] = st.get("lost", 0) + self.backlog.dropped
            st["backlog"] = len(self.backlog)
        return st

    def tcp_transitions(self) -> dict[tuple[str, str], int] | None:
        read = getattr(self.source, "tcp_transitions", None)
        return read() if read is not None else None

    def finish(self) -> list[Verdict]:
        """Decides what is still open (the source ended or the process
        is stopping), through the verdict sinks as in `step`."""
        verdicts = self.state.flush() if self.state is not None else []
        for out in self.verdict_sinks:
            out(verdicts)
        return verdicts

    @property
    def source_done(self) -> bool:
        """A replay that has handed out every record (a live source never is)."""
        return bool(getattr(self.source, "done", False))

    def stop(self) -> None:
        # the server first: a scrape must not read maps of a stopped session
        self._stopped = True
        if self._httpd is not None:
            self._httpd.stop()
            self._httpd = None
        self.source.stop()
        if self.backlog is not None:
            self.backlog.close()

    def __enter__(self) -> "Exporter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
