"""Reads a recording in batches of records, fast, for reports.

Reports replay millions of records; a per-line generator through the
stdlib `json` costs more than classifying them. This reader takes the file
in blocks of lines and decodes each with orjson (about 3x faster than
`json`), yielding lists of records.

Every line that is not a plain event record (the header, the totals, a
line orjson refuses, the cut last line of a killed recording) goes through
the recording reader of `rsttrace.tracer.recording`, so errors, warnings,
`truncated` and `totals` are exactly the ones every other reader reports.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import orjson

from rsttrace.tracer.recording import iter_recording

BLOCK_BYTES = 4 << 20   # ~10,000 records per batch: bounded memory, few calls


def iter_batches(path: str | os.PathLike[str]) -> tuple[Any, Iterator[list[dict[str, Any]]]]:
    """(reader, iterator of record lists). The reader has the same
    `header`, `totals`, `truncated` and `warnings` as `iter_recording`'s,
    filled as the iterator is consumed (`header` after the first batch)."""
    reader, _ = iter_recording(path)
    return reader, _batches(reader)


def _batches(reader: Any) -> Iterator[list[dict[str, Any]]]:
    try:
        # Lines are handed to the recording reader as it reads them itself:
        # text, with undecodable bytes kept (a cut multi-byte character is
        # then reported as a cut line, not a decoding crash).
        fh = open(reader.path, encoding="utf-8", errors="surrogateescape")
    except OSError:
        # The recording reader words the error (missing file, permission).
        yield from _slow(reader)
        return
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    parse = reader._parse
    with fh:
        lineno = 0
        lines = fh.readlines(BLOCK_BYTES)
        while lines:
            nxt = fh.readlines(BLOCK_BYTES)
            at_end = not nxt
            last_i = len(lines) - 1
            batch: list[dict[str, Any]] = []
            append = batch.append
            for i, raw in enumerate(lines):
                lineno += 1
                if reader.header is not None:
                    try:
                        rec = loads(raw)
                    except decode_error:
                        rec = None
                    if type(rec) is dict and rec.get("kind") not in ("header", "totals"):
                        append(rec)
                        continue
                rec = parse(lineno, raw, last=at_end and i == last_i)
                if rec is not None:
                    append(rec)
            if batch:
                yield batch
            lines = nxt
    if reader.header is None:
        # An empty file or one without a header: same error as everywhere.
        yield from _slow(reader)


def _slow(reader: Any) -> Iterator[list[dict[str, Any]]]:
    batch = list(reader)
    if batch:
        yield batch
