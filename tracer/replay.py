"""Replays a JSONL recording with the live source's interface.

`ReplaySource` has the methods of `TraceSession` (`start`, `header`,
`poll`, `snapshot`, `stats`, `stop`, context manager), so the TUI, analysis
and tests run the same code on a recording as on the kernel, without root.

`speed=0` releases records as fast as the consumer polls (in batches of at
most `batch_max`, so a consumer stays responsive on huge files);
`speed=N` releases each record when `(t - t0) / N` seconds have passed since
`start()`, so a 60 s incident replays in 6 s at `speed=10`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

from rsttrace.schema.recording import RecordingError, iter_recording

__all__ = ["ReplaySource", "RecordingError"]


class ReplaySource:
    def __init__(self, path: str | Path, speed: float = 0.0, batch_max: int = 5000,
                 clock: Callable[[], float] = time.monotonic):
        if speed < 0:
            raise ValueError(f"speed must be 0 (as fast as possible) or positive, not {speed}")
        self.path = Path(path)
        self.speed = float(speed)
        self.batch_max = batch_max
        self._clock = clock
        self._reader, self._it = iter_recording(self.path)
        # The header is read eagerly: a wrong file fails here, before any UI starts.
        self._next: dict[str, Any] | None = self._pull()
        if self._reader.header is None:
            raise RecordingError(f"{self.path}: missing header line; not an rsttrace recording")
        self.header: dict[str, Any] = dict(self._reader.header)
        self._started_at: float | None = None
        self._t0: float | None = None
        self._events = 0
        self._last_ctx: dict[str, Any] | None = None
        self._last_t: float | None = None
        self._stopped = False

    def _pull(self) -> dict[str, Any] | None:
        try:
            return next(self._it)
        except StopIteration:
            return None
        except RecordingError as e:
            if self._reader.header is None:
                raise
            # The file stopped being readable part way (an I/O error): what
            # was read stands, the replay ends there and says why.
            self._reader._notes.append(f"{e}; the replay ends there")
            return None

    # -- TraceSession interface -------------------------------------------
    def start(self) -> "ReplaySource":
        if self._started_at is None:
            self._started_at = self._clock()
            t0 = self._next.get("t") if self._next else None
            self._t0 = float(t0) if isinstance(t0, (int, float)) else float(self.header.get("t") or 0.0)
        return self

    def __enter__(self) -> "ReplaySource":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def done(self) -> bool:
        """Every record of the file has been handed out (or the source stopped)."""
        return self._stopped or self._next is None

    def _due(self, rec: dict[str, Any]) -> bool:
        if self.speed == 0:
            return True
        t = rec.get("t")
        if not isinstance(t, (int, float)) or self._t0 is None or self._started_at is None:
            return True
        return (t - self._t0) / self.speed <= self._clock() - self._started_at

    def poll(self, timeout_s: float = 0.1) -> list[dict[str, Any]]:
        """The next batch of records that are due; waits up to `timeout_s`
        for the first one, returns [] when none is due (or the file ended)."""
        self.start()
        out: list[dict[str, Any]] = []
        deadline = self._clock() + max(0.0, timeout_s)
        while not self._stopped and self._next is not None and len(out) < self.batch_max:
            rec = self._next
            if not self._due(rec):
                if out:
                    break
                # Nothing due yet: sleep until this record is, bounded by the timeout.
                assert self._t0 is not None and self._started_at is not None
                wait = (rec["t"] - self._t0) / self.speed - (self._clock() - self._started_at)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                time.sleep(max(0.0, min(wait, remaining)))
                continue
            out.append(rec)
            self._account(rec)
            self._next = self._pull()
        return out

    def _account(self, rec: dict[str, Any]) -> None:
        if rec.get("kind") == "ctx":
            self._last_ctx = rec
        else:
            self._events += 1
        t = rec.get("t")
        if isinstance(t, (int, float)):
            self._last_t = float(t)

    def now(self) -> float:
        """The recording's clock: the time in the recording that has been
        reached (speed 0: the last record handed out)."""
        if self._t0 is None:
            return float(self.header.get("t") or 0.0)
        if self.speed == 0 or self._started_at is None:
            return self._last_t if self._last_t is not None else self._t0
        return self._t0 + (self._clock() - self._started_at) * self.speed

    def snapshot(self) -> dict[str, Any]:
        """The latest context record replayed so far (a recording cannot take
        a new one); an empty ctx before the first."""
        if self._last_ctx is not None:
            return self._last_ctx
        return {"kind": "ctx", "t": self.now(), "namespaces": []}

    def stats(self) -> dict[str, int]:
        totals = self._reader.totals or {}
        # Lost events are known from the totals line once the file is read to
        # its end; a truncated recording has none and reports 0. `invalid`:
        # lines skipped so far because they did not validate.
        return {"events": self._events, "lost": int(totals.get("lost") or 0),
                "invalid": self._reader.invalid}

    @property
    def truncated(self) -> bool:
        return self._reader.truncated

    @property
    def warnings(self) -> list[str]:
        return list(self._reader.warnings)

    def stop(self) -> None:
        self._stopped = True

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every remaining record, ignoring speed (for reports and tests)."""
        while self._next is not None and not self._stopped:
            rec = self._next
            self._account(rec)
            self._next = self._pull()
            yield rec
