"""JSON Lines recordings: the writer used by `rsttrace record` and the reader
used by reports, replay and tests.

Pure Python (no bcc): analysis and the TUI read recordings without root.
Layout (docs/EVENTS.md): a header line, then records, then a totals line.
The writer only ever appends whole lines and flushes them per batch, so a
recording stopped by Ctrl-C, SIGTERM or SIGHUP is complete, and one killed outright
loses at most its last, partial line (which the reader reports and skips).
Where it goes and what it may overwrite: `open_output`.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from rsttrace.outfile import InPlace, OutputError, open_in_place, write_error

SCHEMA_VERSION = 1


class RecordingError(Exception):
    """A recording that cannot be read; the message names the line."""


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def encode_records(records: Iterable[dict[str, Any]]) -> tuple[bytes, dict[str, int]]:
    """Records as JSON Lines (UTF-8, each line ending in a newline), and
    how many there are of each kind."""
    lines, by_kind = [], {}
    for r in records:
        lines.append(_dumps(r) + "\n")
        k = r.get("kind", "?")
        by_kind[k] = by_kind.get(k, 0) + 1
    return "".join(lines).encode(), by_kind


def is_recording_start(head: bytes) -> bool:
    """Whether a file that begins with `head` is an rsttrace recording (its
    first line a header), which `rsttrace record` may overwrite."""
    first = head.split(b"\n", 1)[0]
    try:
        rec = json.loads(first)
    except ValueError:
        return False
    return isinstance(rec, dict) and rec.get("kind") == "header"


def open_output(path: str | os.PathLike[str], force: bool = False) -> InPlace:
    """Opens where a recording goes (rsttrace.outfile.open_in_place): a new
    file (mode 0600), a FIFO or a character device; an existing file only
    if it is empty or a recording, unless `force`; never a link. Nothing
    is changed until RecordingWriter writes the header. `-` is refused
    rather than taken as a file of that name (it means standard output to a
    report, and a recording is read back from a file)."""
    if os.fspath(path) == "-":
        raise OutputError("a recording is written to a file: give its path (`./-` for a file named -)")
    return open_in_place(path, replaceable=is_recording_start, force=force, what="recording")


class RecordingWriter:
    """Appends records to a JSONL file; `close(totals)` ends it.

    `target` is a path or what `open_output` opened. Thread-safe: the event
    consumer and the context sampler both write. `close` is idempotent so
    it can be called from a signal path and again from a `finally`.
    Write errors raise OutputError naming the path as given.
    """

    def __init__(self, target: str | os.PathLike[str] | InPlace, header: dict[str, Any]):
        out = target if isinstance(target, InPlace) else open_output(target)
        self.path = Path(out.name)
        self._name = out.name
        header = dict(header)
        header.setdefault("kind", "header")
        header.setdefault("schema", SCHEMA_VERSION)
        self._lock = threading.Lock()
        self._closed = False
        self.count = 0
        self.by_kind: dict[str, int] = {}
        self._fh = out.fh
        try:
            out.start()
            self._put((_dumps(header) + "\n").encode())
        except BaseException:
            self._closed = True
            self._fh.close()
            raise

    def _put(self, data: bytes) -> None:
        try:
            self._fh.write(data)
            self._fh.flush()
        except OSError as e:
            raise write_error(self._name, e) from None

    def write(self, record: dict[str, Any]) -> None:
        self.write_many((record,))

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        self.write_jsonl(*encode_records(records))

    def write_jsonl(self, data: bytes, by_kind: dict[str, int]) -> None:
        """Records already encoded as JSON Lines (each line ending in a
        newline), as `Decoder.encode_jsonl` makes them; `by_kind` counts them."""
        if not data:
            return
        for k, n in by_kind.items():
            if k != "ctx":
                self.count += n
            self.by_kind[k] = self.by_kind.get(k, 0) + n
        with self._lock:
            if self._closed:
                return
            self._put(data)

    def close(self, totals: dict[str, Any] | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            final = {"kind": "totals", "events": self.count, "lost": 0,
                     "by_kind": dict(self.by_kind)}
            final.update(totals or {})
            try:
                self._put((_dumps(final) + "\n").encode())
                try:
                    os.fsync(self._fh.fileno())
                except OSError:
                    pass        # a FIFO or a device: nothing to make durable
            finally:
                try:
                    self._fh.close()
                except OSError:
                    pass

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass
class Recording:
    header: dict[str, Any]
    records: list[dict[str, Any]]
    totals: dict[str, Any] | None = None
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)


class _Reader:
    """Streams a recording and remembers what it learned on the way."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.header: dict[str, Any] | None = None
        self.totals: dict[str, Any] | None = None
        self.truncated = False
        self.warnings: list[str] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            # text mode: json.loads on str skips per-line encoding detection;
            # surrogateescape keeps a cut multi-byte character from raising
            # here (the cut line is then reported like any other)
            fh = open(self.path, encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            raise RecordingError(f"{self.path}: no such file") from None
        except OSError as e:
            raise RecordingError(f"{self.path}: cannot read: {e.strerror}") from None
        with fh:
            pending: tuple[int, str] | None = None
            lineno = 0
            for raw in fh:
                lineno += 1
                # A line is judged only once the next one exists, so that a
                # cut last line can be told from a malformed one in the middle.
                if pending is not None:
                    rec = self._parse(*pending, last=False)
                    if rec is not None:
                        yield rec
                pending = (lineno, raw)
            if pending is not None:
                rec = self._parse(*pending, last=True)
                if rec is not None:
                    yield rec
            if self.header is None:
                raise RecordingError(f"{self.path}: empty file, not an rsttrace recording "
                                     "(record one with `rsttrace record -o FILE.jsonl`)")

    def _parse(self, lineno: int, raw: str, last: bool) -> dict[str, Any] | None:
        text = raw.strip()
        if not text:
            return None
        try:
            rec = json.loads(text)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if last and not raw.endswith("\n"):
                self.truncated = True
                self.warnings.append(
                    f"{self.path}:{lineno}: last line is cut off (recording was killed); "
                    "it was skipped, everything before it was read")
                return None
            raise RecordingError(f"{self.path}:{lineno}: malformed line ({e}); "
                                 "the file is damaged, not just cut off") from None
        if self.header is None:
            if rec.get("kind") != "header":
                raise RecordingError(f"{self.path}:{lineno}: missing header line; "
                                     "not an rsttrace recording")
            schema = rec.get("schema")
            if schema != SCHEMA_VERSION:
                raise RecordingError(
                    f"{self.path}:{lineno}: unknown schema version {schema!r} "
                    f"(this rsttrace reads version {SCHEMA_VERSION}); "
                    "use the rsttrace version that recorded it")
            self.header = rec
            return None
        if rec.get("kind") == "totals":
            self.totals = rec
            return None
        return rec


def iter_recording(path: str | os.PathLike[str]) -> tuple[_Reader, Iterator[dict[str, Any]]]:
    """Returns (reader, iterator). The reader's `header`, `totals`,
    `truncated` and `warnings` are filled as the iterator is consumed
    (`header` after the first record is taken)."""
    reader = _Reader(path)
    return reader, iter(reader)


def read_recording(path: str | os.PathLike[str]) -> Recording:
    reader = _Reader(path)
    records = list(reader)
    assert reader.header is not None
    if reader.totals is None and not reader.truncated:
        reader.warnings.append(f"{reader.path}: no totals line (recording did not end cleanly)")
    return Recording(reader.header, records, reader.totals, reader.truncated, reader.warnings)
