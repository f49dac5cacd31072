"""Events read from the kernel and not yet classified, in order.

Classifying a reset costs tens of microseconds of Python; the fastest
storm measured here sends one every 13. Left in the kernel's rings, what
the classifier cannot take in time fills them and is lost, during exactly
the incident the metrics must show. So the exporter drains the rings on
every poll and classifies for a bounded time; what is left waits here,
raw (232 bytes an event, as the kernel wrote it) in an unlinked file, with
the context records between them, and is classified as soon as time
allows. The memory a storm takes stays that of one chunk; the cost is
that counts lag behind the storm (`rsttrace_backlog_events` says by how
much). Past `max_bytes` in the file (emptied whenever the backlog is),
new events are dropped and counted as lost.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from typing import Any

import numpy as np

from rsttrace.tracer.events import EVENT_DTYPE

DEFAULT_MAX_MB = 256      # about 1.1 million events: 10 s of the fastest storm measured here


class Backlog:
    def __init__(self, directory: str | None = None, max_bytes: int = DEFAULT_MAX_MB << 20):
        self.dir, self.max_bytes = directory, max_bytes
        self._fd: int | None = None
        # in order: ("ev", offset, events) or ("ctx", records)
        self._frames: deque[tuple] = deque()
        self._end = 0            # the file's size
        self.events = 0          # events held now
        self.dropped = 0         # events dropped past max_bytes, ever
        self.peak_events = 0

    def __len__(self) -> int:
        return self.events

    def __bool__(self) -> bool:
        return bool(self._frames)

    def put(self, arr: np.ndarray, ctx: list[dict[str, Any]]) -> None:
        """Hold one poll's events (in time order) and context records."""
        if len(arr):
            # the file's size is the cap (it is emptied whenever the
            # backlog is): bounded on disk however long the storm
            if self._end + arr.nbytes > self.max_bytes:
                self.dropped += len(arr)
            else:
                if self._fd is None:
                    # unlinked at once: nothing is left behind however the process ends
                    with tempfile.TemporaryFile(dir=self.dir, prefix=".rsttrace-backlog-") as f:
                        self._fd = os.dup(f.fileno())
                data = np.ascontiguousarray(arr).tobytes()
                n = os.pwrite(self._fd, data, self._end)
                if n != len(data):
                    raise OSError(f"short write to the backlog file ({n} of {len(data)} bytes)")
                self._frames.append(("ev", self._end, len(arr)))
                self._end += n
                self.events += len(arr)
                self.peak_events = max(self.peak_events, self.events)
        if ctx:
            self._frames.append(("ctx", ctx))

    def take(self, max_events: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The oldest held events (at most `max_events`) and the context
        records that came right after them, before any later event."""
        parts: list[bytes] = []
        ctx: list[dict[str, Any]] = []
        want = max_events
        while self._frames:
            frame = self._frames[0]
            if frame[0] == "ctx":
                ctx += frame[1]
                self._frames.popleft()
                continue
            if ctx or want <= 0:
                break         # events after a context record wait for the next take
            _, at, n = frame
            k = min(n, want)
            size = k * EVENT_DTYPE.itemsize
            data = os.pread(self._fd, size, at)
            if len(data) != size:
                raise OSError(f"short read from the backlog file ({len(data)} of {size} bytes)")
            parts.append(data)
            self._frames.popleft()
            if k < n:
                self._frames.appendleft(("ev", at + size, n - k))
            want -= k
            self.events -= k
        if not self._frames and self._fd is not None and self._end:
            # empty again: the file's space back, and its pages out of the cache
            os.ftruncate(self._fd, 0)
            self._end = 0
        arr = np.frombuffer(b"".join(parts), dtype=EVENT_DTYPE) if parts \
            else np.empty(0, dtype=EVENT_DTYPE)
        return arr, ctx

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._frames.clear()
        self.events = 0
