"""The exporter's loop: poll the source, count, serve /metrics over HTTP.

The source is a live `TraceSession` or a `ReplaySource` (same methods).
Polling and classification run in the caller's thread; prometheus-client's
HTTP server runs in its own daemon thread and only reads a copy of the
state (and the kernel's counter maps) when scraped.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from rsttrace.analysis.classify import Classifier

from .collector import RsttraceCollector
from .netns import NetnsLabels
from .state import ExportState

# Not one of the ports registered for other exporters; loopback by default,
# since the metrics name the host's namespaces and sysctls.
DEFAULT_PORT = 9471
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"


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


MAX_PENDING = 20_000


class Exporter:
    def __init__(self, source: Any, listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT),
                 netns_cap: int = 50, window_s: float = 10.0,
                 idle_timeouts: dict[str, float] | None = None, resolver=None):
        self.source = source
        self.listen = listen
        self.netns_cap = netns_cap
        self.window_s = window_s
        self.idle_timeouts = idle_timeouts or {}
        self.resolver = resolver
        self.state: ExportState | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self._httpd = None
        self._thread = None
        self.scrape_errors: list[str] = []

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens (the real port when 0 was asked)."""
        assert self._httpd is not None, "exporter not started"
        host, port = self._httpd.server_address[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"

    def start(self) -> "Exporter":
        """Start the source first (so its header is known), then the server."""
        self.source.start()
        header = dict(self.source.header)
        names = header.get("netns_names") or {}
        # A storm's open incidents are bounded by count, not only by the
        # pairing window: a reset pair arrives together, so deciding the
        # oldest early under a storm loses nothing and keeps memory flat.
        classifier = Classifier(window_s=self.window_s, idle_timeouts=self.idle_timeouts,
                                netns_names=names, max_pending=MAX_PENDING)
        labels = NetnsLabels(cap=self.netns_cap, names=names, resolver=self.resolver)
        self.state = ExportState(classifier, labels, header)
        self.registry.register(RsttraceCollector(self.state, self.source,
                                                 on_error=lambda e: self._note(repr(e))))
        addr, port = self.listen
        try:
            self._httpd, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError:
            self.source.stop()   # nothing may stay attached when the port is taken
            raise
        return self

    def _note(self, err: str) -> None:
        if len(self.scrape_errors) < 100:
            self.scrape_errors.append(err)

    def _now(self) -> float:
        now = getattr(self.source, "now", None)
        return float(now()) if callable(now) else time.time()

    def step(self, timeout_s: float = 0.2) -> int:
        """One poll of the source; returns the number of records taken."""
        assert self.state is not None, "exporter not started"
        records = self.source.poll(timeout_s)
        if records:
            self.state.ingest(records)
        self.state.tick(self._now())
        return len(records)

    @property
    def source_done(self) -> bool:
        """A replay that has handed out every record (a live source never is)."""
        return bool(getattr(self.source, "done", False))

    def stop(self) -> None:
        # the server first: a scrape must not read maps of a stopped session
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.source.stop()

    def __enter__(self) -> "Exporter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
