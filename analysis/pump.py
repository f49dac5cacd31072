"""Records in, verdicts out: the one loop around the Classifier.

Every consumer of a record stream (the live screen's feeder, the exporter,
the remedy engine's sources, the report, the lab's diagnosis) does the
same three things: feed records in stream order, tick with the source's
clock so a reset whose other half never comes is still decided, and flush
at the end of a finite stream. `Pump` does them and hands each list of
verdicts, as it is decided, to a sink.

Two ways to drive it: step by step (`feed`, `tick`, `flush`) for a source
polled in a loop, or `run` for a finite stream read to its end (a
recording), which also holds the cyclic garbage collector off meanwhile.
"""

from __future__ import annotations

import gc
import time
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

from .classify import Classifier, Verdict

Sink = Callable[[list[Verdict]], Any]
Clock = Callable[[], float]


def clock_of(source: Any, wall: Clock = time.time) -> Clock:
    """The clock a source's verdicts are ticked with: the recording's own
    time for a replay (a source with `now()`), the wall's for a live one."""
    now = getattr(source, "now", None)
    return now if callable(now) else wall


def batches_of(records: Iterable[dict[str, Any]], size: int = 4096) -> Iterator[list[dict[str, Any]]]:
    """A stream of records as lists of at most `size`: fed one list at a
    time, the verdicts of a long stream leave as they are decided."""
    it = iter(records)
    while batch := list(islice(it, size)):
        yield batch


class Pump:
    """Feeds `classifier` and hands its verdicts to `sink`, in the order
    they were decided; `clock` (the source's: `clock_of`) is what `tick()`
    without an argument asks."""

    __slots__ = ("classifier", "sink", "clock")

    def __init__(self, classifier: Classifier, sink: Sink, clock: Clock = time.time):
        self.classifier = classifier
        self.sink = sink
        self.clock = clock

    def _out(self, verdicts: list[Verdict]) -> None:
        if verdicts:
            self.sink(verdicts)

    def feed(self, records: Iterable[dict[str, Any]]) -> None:
        """Records in stream order (docs/EVENTS.md). The verdicts they decide
        reach the sink together, after the last: a stream of unknown length
        goes in as `batches_of` it."""
        self._out(self.classifier.feed_many(records))

    def tick(self, now: float | None = None) -> None:
        """Decides what has waited its pairing window by `now` (default:
        the clock), when no record has come to say time went on."""
        self._out(self.classifier.tick(self.clock() if now is None else now))

    def flush(self) -> None:
        """The stream ended: every open incident is decided now."""
        self._out(self.classifier.flush())

    def run(self, batches: Iterable[Iterable[dict[str, Any]]]) -> None:
        """Every batch, then `flush`: a finite stream read to its end.

        Replaying makes millions of short-lived records and verdicts that
        never form reference cycles: reference counting frees them, and the
        cyclic collector would only walk the live ones again and again (a
        large share of a long replay's time), so it is held off until the
        stream has been read."""
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            for batch in batches:
                self.feed(batch)
            self.flush()
        finally:
            if gc_was_on:
                gc.enable()
