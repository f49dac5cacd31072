"""Bursts: while events arrive faster than `rate` per second, `rsttrace
record` keeps them as the kernel gave them and writes them as JSON text
once the burst is over.

Turning an event into JSON text costs about 1 µs of CPU; keeping it raw
(its 232 bytes appended to an unlinked file beside the recording) about a
tenth of that. During a reset storm the host's CPUs are the storm's, and
every CPU-second the recorder spends is taken from the host in trouble
(bench/bench_storm.py --loops 2), so the text waits until the rate falls:
then the held events are written, in order and between the context records
that came with them, at most CATCHUP_EVENTS per poll so the kernel's rings
keep being drained meanwhile. Past `max_bytes` held, events are written as
they come again (the hold only bounds how much work waits); when the
recording ends, everything held is written before the totals line, so a
recording stopped by Ctrl-C or SIGTERM is as complete as one that never
held anything. (Killed outright, what was held is lost with the process.)
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import deque
from typing import Callable

import numpy as np

from rsttrace.schema.recording import RecordingWriter, encode_records

from .events import EVENT_DTYPE, KINDS, Decoder

# Events per second above which a poll's events are held, not written: at
# this rate writing them as text takes about 2 % of a CPU.
HOLD_RATE = 20_000
# The rate is judged over windows of this length, so one poll that comes
# back early or late does not flip the decision.
WINDOW_S = 0.05
# Held events written per poll while catching up, ENCODE_EVENTS at a time
# (the size of batch the encoder is fastest with: bench/bench_encode.py
# --batch; it keeps the memory a batch of text takes what it is without a
# hold).
CATCHUP_EVENTS = 16384
ENCODE_EVENTS = 4096
# Default for `rsttrace record --burst-buffer`: about 4.6 million events,
# some 15 s of the highest reset rate measured here, 4-5 CPU-seconds to
# write out.
DEFAULT_MAX_MB = 1024


def kind_counts(arr: np.ndarray) -> dict[str, int]:
    kinds, counts = np.unique(arr["kind"], return_counts=True)
    return {KINDS.get(int(k), str(k)): int(n) for k, n in zip(kinds, counts)}


class BurstWriter:
    """Writes batches of raw events and context records to `writer`,
    holding them raw in a file in `directory` during bursts (see the
    module's text). `max_bytes` 0 never holds."""

    def __init__(self, writer: RecordingWriter, decoder: Decoder, directory: str,
                 max_bytes: int = DEFAULT_MAX_MB << 20, rate: float = HOLD_RATE,
                 clock: Callable[[], float] = time.monotonic):
        self._writer, self._decoder = writer, decoder
        self._dir, self.max_bytes, self.rate = directory, max_bytes, rate
        self._clock = clock
        self._since, self._seen = clock(), 0
        self.busy = False
        self._fd: int | None = None
        # held records in order: (offset, length, None for events or the
        # context records' counts by kind), their bytes in the file
        self._frames: deque[tuple[int, int, dict[str, int] | None]] = deque()
        self._end = 0          # where the next frame goes
        self.held = 0          # events held now
        self.deferred = 0      # events ever held
        self.peak_bytes = 0
        self.note = ""         # why holding stopped, if it did

    @property
    def catching_up(self) -> bool:
        """Events are held and the burst is over: the next poll should not
        wait for new events."""
        return bool(self.held) and not self.busy

    @property
    def held_bytes(self) -> int:
        return self._end - self._frames[0][0] if self._frames else 0

    def write(self, arr: np.ndarray, ctx: list[dict]) -> None:
        """One poll's events (raw, in time order) and context records."""
        now = self._clock()
        self._seen += len(arr)
        if now - self._since >= WINDOW_S:
            self.busy = self._seen >= self.rate * (now - self._since)
            self._since, self._seen = now, 0
        if not self.busy or not self.max_bytes:
            if self._frames:     # behind the held ones, in order
                self._hold(arr, ctx)
                self._catch_up(CATCHUP_EVENTS)
            else:
                self._emit(arr, ctx)
            return
        # past the cap, the oldest held are written as fast as new ones come
        while self._frames and self.held_bytes + arr.nbytes > self.max_bytes:
            self._catch_up(1)
        if self.held_bytes + arr.nbytes <= self.max_bytes:
            self._hold(arr, ctx)
        else:                    # one batch larger than the whole cap
            self._emit(arr, ctx)

    def finish(self) -> int:
        """Write everything held; returns how many events that was."""
        n = self.held
        while self._frames:
            self._catch_up(CATCHUP_EVENTS)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return n

    def _emit(self, arr: np.ndarray, ctx: list[dict]) -> None:
        if len(arr):
            self._writer.write_jsonl(self._decoder.encode_jsonl(arr), kind_counts(arr))
        self._writer.write_many(ctx)

    def _hold(self, arr: np.ndarray, ctx: list[dict]) -> None:
        """Keep `arr` and `ctx` behind what is held; where the file cannot
        take them (disk full, say), write everything as text instead, from
        now on."""
        try:
            frames = self._append(arr, ctx)
        except OSError as e:
            self.max_bytes = 0
            self.note = f"holding events raw stopped ({e.strerror or e}): written as they come"
            self.finish()
            self._emit(arr, ctx)
            return
        self._frames.extend(frames)
        self.held += len(arr)
        self.deferred += len(arr)
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)

    def _append(self, arr: np.ndarray, ctx: list[dict]) -> list[tuple[int, int, dict | None]]:
        if self._fd is None:
            # unlinked: nothing is left behind however the process ends
            f = tempfile.TemporaryFile(dir=self._dir, prefix=".rsttrace-burst-")
            self._fd = os.dup(f.fileno())
            f.close()
        frames = []
        for data, counts in ((np.ascontiguousarray(arr), None), encode_records(ctx)):
            size = data.nbytes if isinstance(data, np.ndarray) else len(data)
            if size:
                n = os.pwrite(self._fd, data, self._end)
                if n != size:
                    raise OSError(f"short write to the burst file ({n} of {size} bytes)")
                frames.append((self._end, n, counts))
                self._end += n
        return frames

    def _read(self, at: int, length: int) -> bytes:
        data = os.pread(self._fd, length, at)
        if len(data) != length:
            raise OSError(f"short read from the burst file ({len(data)} of {length} bytes)")
        return data

    def _catch_up(self, events: int) -> None:
        """Write held records from the oldest until `events` events are
        written or nothing is held."""
        done = 0
        while self._frames and done < events:
            at, length, counts = self._frames[0]
            if counts is not None:
                self._frames.popleft()
                self._writer.write_jsonl(self._read(at, length), counts)
                continue
            # held events are adjacent in the file up to the next context
            # record: read and encoded ENCODE_EVENTS at a time
            end, limit = at, at + ENCODE_EVENTS * EVENT_DTYPE.itemsize
            while self._frames and self._frames[0][2] is None and end < limit:
                f_at, f_len, _ = self._frames.popleft()
                take = min(f_len, limit - end)
                if take < f_len:
                    self._frames.appendleft((f_at + take, f_len - take, None))
                end += take
            arr = np.frombuffer(self._read(at, end - at), dtype=EVENT_DTYPE)
            self._emit(arr, [])
            done += len(arr)
            self.held -= len(arr)
        if not self._frames and self._end:
            os.ftruncate(self._fd, 0)   # give the space back between bursts
            self._end = 0
