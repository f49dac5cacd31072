"""The worker side of the live screen: polls a source (TraceSession or
ReplaySource), pumps its records through the classifier (analysis/pump.py),
optionally records, and gathers what the screen needs into a `Batch`.

It runs in a thread and never touches widgets; the App takes a batch when
the previous one has been drawn, so a storm cannot queue up messages: rows
beyond the ring's capacity are counted and dropped here.
"""

from __future__ import annotations

import time
from datetime import timezone, tzinfo
from typing import Any, Callable, Protocol

from rsttrace.analysis.classify import Classifier, Verdict
from rsttrace.analysis.pump import Pump, clock_of
from rsttrace.tui.rows import NetnsNames, make_row
from rsttrace.tui.state import Batch


YIELD_EVERY = 256


class Source(Protocol):
    header: dict[str, Any]

    def start(self) -> Any: ...
    def poll(self, timeout_s: float = 0.1) -> list[dict[str, Any]]: ...
    def stats(self) -> dict[str, int]: ...
    def stop(self) -> None: ...


class Recorder(Protocol):
    def write_many(self, records: Any) -> None: ...
    def close(self, totals: dict[str, Any] | None = None) -> None: ...


class Feeder:
    def __init__(self, source: Source, classifier: Classifier, capacity: int,
                 recorder: Recorder | None = None, tz: tzinfo | None = timezone.utc,
                 wall: Callable[[], float] = time.time):
        self.source = source
        self.pump = Pump(classifier, self._verdicts, clock_of(source, wall))
        self.capacity = capacity
        self.recorder = recorder
        self.tz = tz
        self._wall = wall
        self.names = NetnsNames(source.header.get("netns_names") or {})
        self._seq = 0
        self._batch = Batch.empty(capacity)
        self._batch.netns_names.update(self.names.snapshot())
        self.done = False
        self.records = 0
        self._started = wall()

    def now(self) -> float:
        """The event clock: the recording's for a replay, the wall's live."""
        return float(self.pump.clock())

    def _verdicts(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            self._seq += 1
            self._batch.add_row(make_row(self._seq, v, self.names, self.tz))

    def step(self, timeout_s: float = 0.05) -> int:
        """One poll: returns how many records it read."""
        if self.done:
            time.sleep(timeout_s)
            return 0
        recs = self.source.poll(timeout_s)
        if recs and self.recorder is not None:
            self.recorder.write_many(recs)
        b = self._batch
        for i in range(0, len(recs), YIELD_EVERY):
            if i:
                # Hand the GIL to the UI thread: without it a storm batch holds
                # the interpreter for hundreds of ms and key presses wait.
                time.sleep(0)
            chunk = recs[i:i + YIELD_EVERY]
            for rec in chunk:
                if rec.get("kind") == "ctx":
                    for ns in rec.get("namespaces") or []:
                        if isinstance(ns, dict) and ns.get("name") and ns.get("netns") is not None:
                            self.names.update({ns["netns"]: ns["name"]})
                b.add_record(rec)
            self.pump.feed(chunk)
        self.records += len(recs)
        self.pump.tick()
        if getattr(self.source, "done", False):
            # The recording ended: resets still waiting for their pair are final now.
            self.pump.flush()
            self.done = True
        return len(recs)

    def take(self) -> Batch:
        """The batch gathered since the last take, stamped with totals."""
        b, self._batch = self._batch, Batch.empty(self.capacity)
        st = self.source.stats()
        b.events, b.lost = int(st.get("events", 0)), int(st.get("lost", 0))
        b.invalid = int(st.get("invalid", 0))
        b.now = self.now()
        b.source_done = self.done
        return b

    def close(self) -> None:
        """Stops the source (BPF detached) and completes the recording."""
        try:
            # storm mode's last counts (a live session's), into the recording
            flush = getattr(self.source, "flush_storms", None)
            if self.recorder is not None and flush is not None and flush():
                self.recorder.write_many(self.source.poll(0))
            self.source.stop()
        finally:
            if self.recorder is not None:
                st = self.source.stats()
                self.recorder.close({"events": int(st.get("events", 0)),
                                     "lost": int(st.get("lost", 0)), "t": self._wall(),
                                     "duration_s": round(self._wall() - self._started, 3)})
