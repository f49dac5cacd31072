"""The agent's log: one JSON line per classified reset on stdout, what a
cluster's log agent collects.

A reset storm must neither flood the cluster's logging nor stall tracing:
- at most `rate` lines a second; past that the resets are counted by cause
  and one `resets_not_logged` line a second says how many were left out
  (each is still counted in the metrics and kept in the flight recorder);
- lines are written by a thread of their own from a bounded buffer: when
  stdout does not take them (a stalled log pipeline), what does not fit
  is dropped and counted, and a `log_lines_dropped` line says so once
  stdout moves again.
Lines are ASCII JSON: a host string that is not UTF-8 is escaped, never a
reason to fail.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from rsttrace.analysis.classify import Verdict
from rsttrace.analysis.vocab import weight

DEFAULT_RATE = 1000
BUFFER_BYTES = 4 << 20


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds") \
        .replace("+00:00", "Z")


def _side(e: dict[str, Any] | None, names: Callable[[Any], str | None]) -> dict[str, Any] | None:
    if e is None:
        return None
    ns = e.get("netns")
    return {"netns": ns, "netns_name": names(ns), "pod": e.get("pod"), "pid": e.get("pid"),
            "comm": e.get("comm"), "state": e.get("state") or None, "reason": e.get("reason")}


def verdict_record(v: Verdict, node: str, names: Callable[[Any], str | None]) -> dict[str, Any]:
    """The log line of one verdict, as a dict (docs: README, agent)."""
    sent = next((e for e in v.events if e.get("dir") == "sent"), None)
    recv = next((e for e in v.events if e.get("dir") != "sent"), None)
    return {
        "time": iso_time(v.t), "t": v.t, "node": node, "kind": "reset", "incident": v.incident,
        "cause": v.cause, "confidence": v.confidence, "evidence": v.evidence,
        "fix": [{"scope": f.scope, "netns": f.netns, "netns_name": f.netns_name, "key": f.key,
                 "value": f.value, "command": f.command or None} for f in v.fixes],
        "flow": {"src": v.src, "sport": v.sport, "dst": v.dst, "dport": v.dport},
        "sent": _side(sent, names), "received": _side(recv, names),
        "resets": sum(map(weight, v.events)),
    }


def _line(rec: dict[str, Any]) -> bytes:
    # ensure_ascii: a lone surrogate (a name's non-UTF-8 byte) is escaped
    return (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode("ascii")


class LineWriter:
    """Writes byte chunks to `fd` from a thread, holding at most
    `max_bytes`; what does not fit is dropped and counted."""

    def __init__(self, fd: int, max_bytes: int = BUFFER_BYTES, node: str = ""):
        self.fd, self.max_bytes, self.node = fd, max_bytes, node
        self._q: deque[bytes] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self.dropped = 0          # lines dropped, ever
        self._unsaid = 0          # ... not yet told in a line
        self.broken = ""          # why stdout cannot be written, if it cannot
        self._thread = threading.Thread(target=self._run, name="rsttrace-log", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        with self._cond:
            if self.broken or self._closing or self._bytes + len(data) > self.max_bytes:
                n = data.count(b"\n")
                self.dropped += n
                self._unsaid += n
                return
            self._q.append(data)
            self._bytes += len(data)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._q and not self._closing:
                    self._cond.wait()
                if not self._q:
                    return
                data = self._q.popleft()
                self._bytes -= len(data)
                if not self._q and self._unsaid:
                    n, self._unsaid = self._unsaid, 0
                    data += _line({"time": iso_time(time.time()), "node": self.node,
                                   "kind": "log_lines_dropped", "lines": n,
                                   "why": "stdout did not take them in time"})
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as e:
                with self._cond:
                    self.broken = e.strerror or str(e)
                    self.dropped += data.count(b"\n")
                    self._q.clear()
                    self._bytes = 0
                return

    def close(self, timeout_s: float = 5.0) -> None:
        """Writes what is held (for at most `timeout_s`), then stops."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)


class VerdictLog:
    """A verdict sink (Exporter.verdict_sinks): the lines, rate-limited."""

    def __init__(self, writer: LineWriter, node: str, names: Callable[[Any], str | None],
                 rate: int = DEFAULT_RATE, clock: Callable[[], float] = time.monotonic):
        self.writer, self.node, self.names, self.rate = writer, node, names, rate
        self._clock = clock
        self._window = clock()
        self._sent = 0
        self._held: Counter[str] = Counter()
        self._held_since: float | None = None
        self.lines = 0          # reset lines handed to the writer
        self.not_logged = 0     # resets left out by the rate limit

    def __call__(self, verdicts: list[Verdict]) -> None:
        now = self._clock()
        if now - self._window >= 1.0:
            self._roll(now)
        out = []
        for v in verdicts:
            if self.rate <= 0 or self._sent < self.rate:
                out.append(_line(verdict_record(v, self.node, self.names)))
                self._sent += 1
            else:
                if not self._held:
                    self._held_since = v.t
                self._held[v.cause] += 1
        if out:
            self.lines += len(out)
            self.writer.put(b"".join(out))

    def _roll(self, now: float) -> None:
        self._window, self._sent = now, 0
        if self._held:
            n = sum(self._held.values())
            self.not_logged += n
            self.writer.put(_line({
                "time": iso_time(time.time()), "node": self.node, "kind": "resets_not_logged",
                "resets": n, "by_cause": dict(self._held), "since": iso_time(self._held_since or 0.0),
                "why": f"more than {self.rate} resets a second: each is counted in "
                       "rsttrace_reset_incidents_total and kept in the flight recorder"}))
            self._held.clear()
            self._held_since = None

    def close(self) -> None:
        self._roll(self._clock())
        self.writer.close()
