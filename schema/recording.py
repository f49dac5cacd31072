"""JSON Lines recordings: the writer used by `rsttrace record`, the reader
used by replay, the live screen and tests, and the batch reader of reports.

Pure Python (no bcc, no numpy): analysis and the TUI read recordings
without root.
Layout (docs/EVENTS.md): a header line, then records, then a totals line.
The writer only ever appends whole lines and flushes them per batch, so a
recording stopped by Ctrl-C, SIGTERM or SIGHUP is complete, and one killed outright
loses at most its last, partial line (which the reader reports and skips).
Where it goes and what it may overwrite: `open_output`.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from rsttrace.outfile import InPlace, OutputError, open_in_place, write_error

from . import validate as schema
from .catalog import SCHEMA_VERSION


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


# A line longer than this is not a record rsttrace writes (a context
# snapshot of a thousand namespaces is a few hundred kB): reading stops
# holding it there, so no input can take more memory than this and a block.
LINE_MAX = 1 << 20
BLOCK_BYTES = 4 << 20   # read at a time: ~10,000 records


def _kind_of_file(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


class _Reader:
    """Streams a recording and remembers what it learned on the way.

    Reads a regular file, or standard input for `-`, in blocks of bytes
    with lines of at most LINE_MAX: memory stays bounded whatever the input
    (a FIFO or a device given by name is refused before it is opened, so it
    cannot hang the reader or start anything). Every line after the header
    is decoded and checked against the record layout (rsttrace.schema.validate:
    types, ranges, and what JSON refuses: NaN, Infinity, invalid UTF-8,
    lone surrogates). A line that fails is skipped, counted in
    `invalid` and named (the first one) in `warnings`: never a traceback,
    never dropped without a word. A missing or invalid header, or an
    unknown schema, raise RecordingError naming the line."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.stdin = str(path) == "-"
        self.label = "standard input" if self.stdin else str(path)
        self.header: dict[str, Any] | None = None
        self.totals: dict[str, Any] | None = None
        self.truncated = False
        self.invalid = 0                    # lines skipped because they did not validate
        self.first_invalid: str | None = None  # "line 17: t: expected `float`, got `str`"
        self.totals_invalid = False         # a totals line was there, but did not validate
        self._notes: list[str] = []

    @property
    def warnings(self) -> list[str]:
        out = list(self._notes)
        if self.invalid:
            n = self.invalid
            out.append(f"{self.label}: {n} record{'s' if n != 1 else ''} did not validate "
                       f"and {'were' if n != 1 else 'was'} skipped (first: {self.first_invalid})")
        return out

    def _open(self) -> BinaryIO:
        if self.stdin:
            if os.isatty(0):
                raise RecordingError("- reads a recording from standard input, which is a terminal: "
                                     "redirect one into it (rsttrace report - < incident.jsonl)")
            try:
                return open(os.dup(0), "rb", buffering=0)
            except OSError as e:
                raise RecordingError(f"standard input: cannot read: {e.strerror}") from None
        try:
            # O_PATH opens nothing: a FIFO would block an open for reading
            # and opening a device can act (a watchdog starts ticking), so
            # the file's type is checked on this handle first.
            where = os.open(self.path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RecordingError(f"{self.label}: no such file") from None
        except OSError as e:
            raise RecordingError(f"{self.label}: cannot read: {e.strerror}") from None
        try:
            mode = os.fstat(where).st_mode
            if not stat.S_ISREG(mode):
                raise RecordingError(f"{self.label}: {_kind_of_file(mode)}, not a recording; give a "
                                     "file made by `rsttrace record` (or - to read standard input)")
            # the same inode again, now for reading (the name may point elsewhere by now)
            return open(os.open(f"/proc/self/fd/{where}", os.O_RDONLY | os.O_CLOEXEC), "rb", buffering=0)
        except OSError as e:
            raise RecordingError(f"{self.label}: cannot read: {e.strerror}") from None
        finally:
            os.close(where)

    def _lines(self) -> Iterator[tuple[int, list[bytes | None], bool]]:
        """(number of the first line, the lines read, whether the last of
        them ended with a newline: only the file's last line may not).
        Lines come without their newline; one longer than LINE_MAX comes as
        None (`_take` counts it), and no more of it is held than that."""
        lineno = 0
        rest = b""
        skipping = False        # inside a line already found too long
        with self._open() as fh:
            while True:
                try:
                    data = fh.read(BLOCK_BYTES)
                except OSError as e:
                    raise RecordingError(f"{self.label}: cannot read: {e.strerror}") from None
                if not data:
                    break
                if skipping:
                    i = data.find(b"\n")
                    if i < 0:
                        continue
                    data = data[i + 1:]
                    skipping = False
                if rest:
                    data = rest + data
                lines: list[bytes | None] = data.split(b"\n")   # type: ignore[assignment]
                rest = lines.pop()                              # type: ignore[assignment]
                if len(rest) > LINE_MAX:
                    lines.append(None)
                    rest, skipping = b"", True
                if lines:
                    if max(map(len, filter(None, lines)), default=0) > LINE_MAX:
                        lines = [None if raw is not None and len(raw) > LINE_MAX else raw
                                 for raw in lines]
                    yield lineno + 1, lines, True
                    lineno += len(lines)
        if rest:
            yield lineno + 1, [rest], False

    def _invalid(self, lineno: int, why: str) -> None:
        if self.header is None:
            raise RecordingError(f"{self.label}:{lineno}: missing header line ({why}); "
                                 "not an rsttrace recording")
        self.invalid += 1
        if self.first_invalid is None:
            self.first_invalid = f"line {lineno}: {why}"

    def __iter__(self) -> Iterator[dict[str, Any]]:
        take = self._take
        for first, lines, ended in self._lines():
            last = len(lines) - 1
            for i, raw in enumerate(lines):
                rec = take(first + i, raw, ended or i < last)
                if rec is not None:
                    yield rec
        self._end()

    def _end(self) -> None:
        if self.header is None:
            raise RecordingError(f"{self.label}: empty file, not an rsttrace recording "
                                 "(record one with `rsttrace record -o FILE.jsonl`)")

    def _take(self, lineno: int, raw: bytes | None, ended: bool = True) -> dict[str, Any] | None:
        """The record on this line, or None (blank, header, totals, or
        counted as invalid)."""
        if raw is None:
            self._invalid(lineno, f"longer than {LINE_MAX >> 20} MiB")
            return None
        if self.header is None:
            if raw.strip():
                self._take_header(lineno, raw)
            return None
        try:
            return schema.decode_record(raw)
        except schema.ERRORS as e:
            failure = e
        # not a record: a blank line, the totals, a cut last line or an invalid one
        if not raw.strip():
            return None
        try:
            whole = schema.decode_any(raw)
        except schema.ERRORS:
            whole = None
        kind = whole.get("kind") if type(whole) is dict else None
        if kind == "totals":
            bad = schema.totals_problem(raw)
            if bad is None:
                self.totals = whole
                return None
            self.totals_invalid = True
        elif kind == "header":
            bad = "a second header line"
        elif not ended and schema.not_json(failure):
            self.truncated = True
            self._notes.append(
                f"{self.label}:{lineno}: last line is cut off (recording was killed); "
                "it was skipped, everything before it was read")
            return None
        else:
            bad = schema.why(failure)
        self._invalid(lineno, bad)
        return None

    def _take_header(self, lineno: int, raw: bytes) -> None:
        try:
            rec = schema.decode_any(raw)
        except schema.ERRORS:
            rec = None
        if type(rec) is not dict or rec.get("kind") != "header":
            raise RecordingError(f"{self.label}:{lineno}: missing header line; "
                                 "not an rsttrace recording")
        version = rec.get("schema")
        if version != SCHEMA_VERSION or type(version) is not int:
            raise RecordingError(
                f"{self.label}:{lineno}: unknown schema version {_short(version)} "
                f"(this rsttrace reads version {SCHEMA_VERSION}); "
                "use the rsttrace version that recorded it")
        bad = schema.header_problem(raw)
        if bad is not None:
            raise RecordingError(f"{self.label}:{lineno}: header: {bad}; not a valid rsttrace recording")
        self.header = rec


def iter_recording(path: str | os.PathLike[str]) -> tuple[_Reader, Iterator[dict[str, Any]]]:
    """Returns (reader, iterator). The reader's `header`, `totals`,
    `truncated`, `invalid` and `warnings` are filled as the iterator is
    consumed (`header` after the first record is taken). `path` "-" reads
    standard input."""
    reader = _Reader(path)
    return reader, iter(reader)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a recording, checked as the reader checks it (at most
    one block is read); RecordingError as the reader raises it."""
    reader = _Reader(path)
    lines = reader._lines()
    try:
        for first, block, ended in lines:
            last = len(block) - 1
            for i, raw in enumerate(block):
                reader._take(first + i, raw, ended or i < last)
                if reader.header is not None:
                    return reader.header
    finally:
        lines.close()
    reader._end()
    raise AssertionError("unreachable")


def read_recording(path: str | os.PathLike[str]) -> Recording:
    reader = _Reader(path)
    records = list(reader)
    assert reader.header is not None
    warnings = reader.warnings
    if reader.totals is None and not reader.truncated and not reader.totals_invalid:
        warnings.append(f"{reader.label}: no totals line (recording did not end cleanly)")
    return Recording(reader.header, records, reader.totals, reader.truncated, warnings)


# ---- batches, for reports ------------------------------------------------
# Reports replay millions of records; a per-line generator costs more than
# classifying them. The batch reader takes the reader's blocks of lines and
# decodes and checks each block in one call, yielding lists of records. A
# block with any line that is not a valid record (the header, the totals, a
# line that is not JSON or does not validate, a blank line, the cut last
# line of a killed recording) is taken line by line by the reader itself,
# so errors, warnings, counts of invalid records, `truncated` and `totals`
# are exactly the ones every other reader reports.

def iter_batches(path: str | os.PathLike[str]) -> tuple[_Reader, Iterator[list[dict[str, Any]]]]:
    """(reader, iterator of record lists). The reader has the same
    `header`, `totals`, `truncated`, `invalid` and `warnings` as
    `iter_recording`'s, filled as the iterator is consumed (`header` after
    the first batch). `path` "-" reads standard input."""
    reader = _Reader(path)
    return reader, _batches(reader)


def _batches(reader: _Reader) -> Iterator[list[dict[str, Any]]]:
    decode_records, errors, take = schema.decode_records, schema.ERRORS, reader._take
    for first, lines, ended in reader._lines():
        batch: list[dict[str, Any]] | None = None
        if reader.header is not None and ended:
            try:
                batch = decode_records(lines)     # type: ignore[arg-type]
            except errors:
                pass
            except TypeError:       # a line too long comes as None
                pass
        if batch is None:
            batch = []
            last = len(lines) - 1
            for i, raw in enumerate(lines):
                rec = take(first + i, raw, ended or i < last)
                if rec is not None:
                    batch.append(rec)
        if batch:
            yield batch
    reader._end()
