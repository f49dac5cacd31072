"""The agent's flight recorder: the live stream written as rotating
recordings, capped by total size and age, so a postmortem on a node has
its last hours.

Each file is a recording as `rsttrace record` writes it (docs/EVENTS.md):
a header, the newest context snapshot (so the file explains its first
resets on its own), the events and context records, and a totals line
when it is rotated or the agent stops; `rsttrace report` reads each one.
Files are named `rsttrace-<UTC time it was started>.jsonl` and created
0600 in a directory only its owner may write; only files of that name are
ever removed. A file that cannot be written (a full disk) is closed, said
once, and a new one is tried a minute later: the recorder never stops the
agent.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsttrace.schema.recording import RecordingWriter, encode_records
from rsttrace.tracer.burst import ENCODE_EVENTS, kind_counts
from rsttrace.tracer.events import Decoder

NAME_RE = re.compile(r"^rsttrace-(\d{8}T\d{6}Z)(?:\.(\d+))?\.jsonl$")
RETRY_S = 60.0


class RecordDirError(Exception):
    """A --record-dir that cannot be used; the message says what to do."""


def prepare_dir(path: str | os.PathLike[str]) -> Path:
    """The recordings' directory, created 0700 when missing. Refused when
    it is a symbolic link, not a directory, or writable by anyone but its
    owner (another user could plant a link where a file is about to be
    made)."""
    p = Path(path)
    try:
        try:
            p.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass                  # a directory or not: said below
        st = os.lstat(p)
    except OSError as e:
        raise RecordDirError(f"--record-dir {path}: cannot create it ({e.strerror}); "
                             "give a writable directory, or --record-max-mb 0 to record nothing") from None
    if stat.S_ISLNK(st.st_mode):
        raise RecordDirError(f"--record-dir {path} is a symbolic link; give the directory it points to")
    if not stat.S_ISDIR(st.st_mode):
        raise RecordDirError(f"--record-dir {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise RecordDirError(f"--record-dir {path} belongs to uid {st.st_uid}, not to this user "
                             f"(uid {os.geteuid()}); give a directory of its own")
    if st.st_mode & 0o022:
        raise RecordDirError(f"--record-dir {path} is writable by others (mode "
                             f"{stat.S_IMODE(st.st_mode):o}): chmod go-w {path}")
    if not os.access(p, os.W_OK | os.X_OK):
        raise RecordDirError(f"--record-dir {path} is not writable")
    return p


@dataclass
class Limits:
    max_bytes: int        # all the files together
    max_age_s: float      # a file whose last write is older is removed
    file_bytes: int       # a file is rotated past this size
    file_s: float         # ... or this long after it was started


def recordings(directory: Path) -> list[tuple[Path, int, float]]:
    """(path, size, mtime) of the directory's recordings, oldest first;
    only regular files named like the recorder's."""
    out = []
    for name in os.listdir(directory):
        m = NAME_RE.match(name)
        if not m:
            continue
        try:
            st = os.lstat(directory / name)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append(((m.group(1), int(m.group(2) or 0)), directory / name, st.st_size, st.st_mtime))
    out.sort()
    return [(p, size, mtime) for _key, p, size, mtime in out]


class FlightRecorder:
    def __init__(self, directory: Path, header: dict[str, Any], decoder: Decoder, limits: Limits,
                 stats: Callable[[], dict[str, int]] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.dir = directory
        self.header = dict(header)
        self.decoder = decoder
        self.limits = limits
        self._stats = stats or (lambda: {})
        self._on_error = on_error or (lambda msg: None)
        self._clock = clock
        self._writer: RecordingWriter | None = None
        self._opened_at = 0.0
        self._size = 0
        self._stats0: dict[str, int] = {}
        self._events = 0        # the kernel's events written to the current file
        self._last_ctx: dict[str, Any] | None = None
        self._retry_at = 0.0
        self.files = 0          # files started
        self.removed = 0        # files removed by the caps

    @property
    def path(self) -> Path | None:
        """The file being written, if any."""
        return self._writer.path if self._writer is not None else None

    def write(self, arr: np.ndarray, ctx: list[dict[str, Any]]) -> None:
        """One poll's raw events (in time order) and context records."""
        if ctx:
            self._last_ctx = ctx[-1]
        now = self._clock()
        w = self._writer
        if w is None or self._size >= self.limits.file_bytes \
                or now - self._opened_at >= self.limits.file_s:
            if w is None and now < self._retry_at:
                return
            if not self._rotate(now):
                return
            w = self._writer
        try:
            for i in range(0, len(arr), ENCODE_EVENTS):
                part = arr[i:i + ENCODE_EVENTS]
                data = self.decoder.encode_jsonl(part)
                w.write_jsonl(data, kind_counts(part))
                self._size += len(data)
                self._events += len(part)
            if ctx:
                data, counts = encode_records(ctx)
                w.write_jsonl(data, counts)
                self._size += len(data)
        except (OSError, ValueError) as e:     # ValueError: text that cannot be encoded
            self._fail(e)

    def close(self) -> None:
        """Ends the file being written with its totals line: the kernel's
        events it holds (counted as written: behind a backlog, events are
        read from the kernel well before they are written, so the reader's
        count while the file was open says nothing of this file), and what
        was lost and rescued while it was open."""
        w, self._writer = self._writer, None
        if w is None:
            return
        st = self._stats()
        totals = {"t": round(self._clock(), 6),
                  "duration_s": round(self._clock() - self._opened_at, 3),
                  **{k: max(0, v - self._stats0.get(k, 0)) for k, v in st.items()
                     if k in ("lost", "rescued")},
                  "kernel_events": self._events}
        w.close(totals)

    # -- files ------------------------------------------------------------
    def _name(self, now: float) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        p = self.dir / f"rsttrace-{stamp}.jsonl"
        n = 0
        while os.path.lexists(p):      # two files started in one second
            n += 1
            p = self.dir / f"rsttrace-{stamp}.{n}.jsonl"
        return p

    def _rotate(self, now: float) -> bool:
        """Ends the file being written and starts the next one."""
        try:
            self.close()
        except (OSError, ValueError) as e:
            self._fail(e)
            return False
        path = w = None
        try:
            self._prune(now)
            path = self._name(now)
            # created 0600: the recording holds addresses, process and pod names
            old = os.umask(0o077)
            try:
                w = RecordingWriter(path, self._header(now))
            finally:
                os.umask(old)
            if self._last_ctx is not None:
                w.write(self._last_ctx)
        except (OSError, ValueError) as e:
            self._writer = w
            self._fail(e, path)
            return False
        self._writer = w
        self._opened_at = now
        self._stats0 = dict(self._stats())
        self._events = 0
        self._size = path.stat().st_size
        self.files += 1
        return True

    def _header(self, now: float) -> dict[str, Any]:
        """The session's header, begun now. Its events' times stay the
        session's monotonic clock converted once at its start: `monotonic`
        moves with `t`, so every file says the same `t - monotonic`."""
        h = {**self.header, "t": round(now, 6)}
        mono, t0 = self.header.get("monotonic"), self.header.get("t")
        if isinstance(mono, (int, float)) and isinstance(t0, (int, float)):
            h["monotonic"] = round(mono + (now - t0), 6)
        return h

    def _prune(self, now: float) -> None:
        """Removes the oldest recordings until the rest and a new file fit
        in the size cap, and every recording older than the age cap."""
        lim = self.limits
        files = recordings(self.dir)
        total = sum(size for _p, size, _m in files)
        for p, size, mtime in files:
            if total + lim.file_bytes <= lim.max_bytes and now - mtime <= lim.max_age_s:
                continue
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            total -= size
            self.removed += 1

    def _fail(self, e: Exception, path: Path | None = None) -> None:
        """Closes the file being written after `e`; a file that got
        nothing, not even its header, is removed."""
        path = path or self.path
        why = getattr(e, "strerror", None) or str(e)
        w, self._writer = self._writer, None
        if w is not None:
            try:
                w.close({"t": round(self._clock(), 6), "note": f"recording stopped: {why}"})
            except (OSError, ValueError):
                pass
        if path is not None:
            try:
                if os.lstat(path).st_size == 0:
                    os.unlink(path)
            except OSError:
                pass
        self._retry_at = self._clock() + RETRY_S
        self._on_error(f"flight recorder: cannot write {path or self.dir}: {why}; "
                       f"trying a new file in {RETRY_S:.0f} s")
