"""Reads a recording in batches of records, fast, for reports.

Reports replay millions of records; a per-line generator costs more than
classifying them. This reader takes the recording reader's blocks of lines
(`rsttrace.tracer.recording`: bounded lines, a regular file or standard
input) and decodes and checks each block against the record layout in one
call (`rsttrace.tracer.schema`), yielding lists of records.

A block with any line that is not a valid record (the header, the totals,
a line that is not JSON or does not validate, a blank line, the cut last
line of a killed recording) is taken line by line by the recording reader
itself, so errors, warnings, counts of invalid records, `truncated` and
`totals` are exactly the ones every other reader reports.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from rsttrace.tracer import schema
from rsttrace.tracer.recording import iter_recording


def iter_batches(path: str | os.PathLike[str]) -> tuple[Any, Iterator[list[dict[str, Any]]]]:
    """(reader, iterator of record lists). The reader has the same
    `header`, `totals`, `truncated`, `invalid` and `warnings` as
    `iter_recording`'s, filled as the iterator is consumed (`header` after
    the first batch). `path` "-" reads standard input."""
    reader, _ = iter_recording(path)
    return reader, _batches(reader)


def _batches(reader: Any) -> Iterator[list[dict[str, Any]]]:
    decode_records, errors, take = schema.decode_records, schema.ERRORS, reader._take
    for first, lines, ended in reader._lines():
        batch: list[dict[str, Any]] | None = None
        if reader.header is not None and ended:
            try:
                batch = decode_records(lines)
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
