"""Postmortem reports: a recording replayed through the same `Classifier`
the live screen uses, into CSV rows (analysis/csvout.py: the one row
formatter, also behind the live screen's export) and a summary
(analysis/summary.py).

Where the rows go is a sink: `CsvStream` writes them as they come (in a
writer process where it can: rsttrace.outfile.Offload), `Rows` keeps them
for a frame, `_Count` only counts them for the summary.
"""

from __future__ import annotations

import operator
import os
from functools import partial
from itertools import chain
from typing import Any, Iterable, TextIO

import numpy as np
import pandas as pd

from rsttrace.outfile import Offload
from rsttrace.schema.recording import iter_batches

from .classify import Classifier, Verdict
from .config import audit
from .csvout import COLUMNS, ROW_EXTRAS, ROW_FIELDS, SPECS, VERDICT_CELLS, RowWriter, rows_of, write_table
from .fixes import Fix, merge_fixes
from .summary import SUMMARY_COLUMNS, TIME_MAX, TIME_MIN, Summary, Tally, TimeRangeError, summarize
from .pump import Pump

__all__ = ["COLUMNS", "CsvStream", "Rows", "fix_text", "parse_time", "report_recording", "summarize_recording",
           "write_report", "write_summary", "write_verdicts"]


def fix_text(fixes: list[Fix]) -> str:
    """The fix cell: exact commands first, then settings that live in a pod
    spec or a client pool (their snippets are in the summary)."""
    parts = [f.command for f in fixes if f.command]
    parts += [f"{f.scope}: {f.key}={f.value}" for f in fixes if not f.command]
    return " ; ".join(parts)


# the verdict's cells but the fix text (the last one)
_verdict_attrs = operator.attrgetter(*VERDICT_CELLS[:-1])


class _Sink:
    """Turns a verdict into CSV rows: the verdict's cells (VERDICT_CELLS)
    and, per reset, its ROW_FIELDS and the name of its namespace."""

    def __init__(self, names: dict[int, str] | None = None, node: str | None = None):
        self.names = names if names is not None else {}
        self.node = node        # the recording's, for rows whose record names none
        self._fix_text: dict[int, tuple[list[Fix], str]] = {}

    def _rows(self, v: Verdict, events: list[dict[str, Any]] | None) -> tuple[tuple, list[tuple]]:
        fixes = v.fixes
        fix = ""
        if fixes:
            hit = self._fix_text.get(id(fixes))
            if hit is None or hit[0] is not fixes:
                if len(self._fix_text) > 8192:
                    self._fix_text.clear()
                hit = self._fix_text[id(fixes)] = (fixes, fix_text(fixes))
            fix = hit[1]
        return _verdict_attrs(v) + (fix,), rows_of(v.events if events is None else events, self.names,
                                                       self.node)


class CsvStream(_Sink):
    """Writes report rows into `out` (an open output) as verdicts arrive,
    without holding them. `close()` writes what is pending; `abort()`
    stops. It keeps only what the summary counts (`tally`, complete after
    `close()`).

    Formatting a million rows costs about as much as classifying them, so
    where it can the rows go to a writer process that formats them while
    this one classifies the next batch (`writer_process`: None decides by
    itself, rsttrace.outfile.Offload): the same `RowWriter`, the same bytes."""

    def __init__(self, out: TextIO, names: dict[int, str] | None = None,
                 writer_process: bool | None = None):
        super().__init__(names)
        out.write(",".join(COLUMNS) + "\n")
        out.flush()     # the header, before a writer process inherits the file
        self._writer = Offload(partial(RowWriter, out), fork=writer_process, batch=_PIPE_ROWS)
        self.tally = Tally()    # filled by close()
        self.n = 0

    def add(self, v: Verdict, events: list[dict[str, Any]] | None = None) -> None:
        vc, rows = self._rows(v, events)
        self.n += 1
        self._writer.add((vc, rows), len(rows))

    def close(self) -> None:
        """Writes every row still pending; the output is then complete."""
        self.tally = self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


_PIPE_ROWS = 2048    # rows per message to the writer process (~170 kB)


class Rows(_Sink):
    """The report's rows kept, for a frame (`frame()`): the same cells the
    CSV writes, typed."""

    def __init__(self, names: dict[int, str] | None = None):
        super().__init__(names)
        self.items: list[tuple[tuple, list[tuple]]] = []
        self.tally = Tally()

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self.items)

    def add(self, v: Verdict, events: list[dict[str, Any]] | None = None) -> None:
        events = v.events if events is None else events
        self.tally.add(v.cause, events, self.node)
        self.items.append(self._rows(v, events))

    def frame(self) -> pd.DataFrame:
        """One row per reset, COLUMNS in order: times as UTC datetimes,
        integers as Int64, idle_s as float, the rest as objects."""
        flat = [(vc, r) for vc, rows in self.items for r in rows]
        data: dict[str, Any] = {}
        for c, f in SPECS:
            if f is None:
                i = VERDICT_CELLS.index(c.column) if c.source == "verdict" else None
                if i is not None:
                    vals = [vc[i] for vc, _ in flat]
                else:
                    j = len(ROW_FIELDS) + ROW_EXTRAS.index(c.column)
                    vals = [r[j] for _, r in flat]
            else:
                i = ROW_FIELDS.index(f.name)
                vals = [r[i] for _, r in flat]
                if c.only_if:
                    j = ROW_FIELDS.index(c.only_if)
                    vals = [x if r[j] else None for x, (_, r) in zip(vals, flat)]
            data[c.column] = _typed(c.fmt, vals)
        return pd.DataFrame(data, columns=COLUMNS)


def _typed(fmt: str, vals: list) -> Any:
    if fmt == "time":
        arr = np.array(vals, dtype="float64")
        return pd.to_datetime((arr * 1000).round().astype("int64"), unit="ms", utc=True) \
            if len(arr) else pd.Series([], dtype="datetime64[ms, UTC]")
    if fmt == "int":
        # from the Python ints: a float on the way would round cookies and cgroup ids
        return pd.array(vals, dtype="Int64")
    if fmt == "ms_as_s":
        return np.array([x / 1000.0 if isinstance(x, (int, float)) else None for x in vals], dtype="float64")
    return np.array(vals, dtype=object)


class _Count:
    """Only what the summary counts."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.names: dict[int, str] = {}
        self.node: str | None = None

    def add(self, v: Verdict, events: list[dict[str, Any]] | None = None) -> None:
        self.tally.add(v.cause, v.events if events is None else events, self.node)


def write_summary(summary: Summary, out: TextIO) -> None:
    """The summary's table (`--summary`) as CSV into `out`."""
    write_table(SUMMARY_COLUMNS, summary.rows, out)


def write_verdicts(verdicts: Iterable[Verdict], out: TextIO, names: dict[int, str] | None = None,
                   node: str | None = None) -> int:
    """Verdicts already made (the live screen's export) as the report's CSV
    into `out`: the same writer, so the same bytes as `rsttrace report -o`
    for the same verdicts (`node`: the recording's, `node_of` its header).
    Returns the rows written."""
    sink = CsvStream(out, names, writer_process=False)
    sink.node = node
    for v in verdicts:
        sink.add(v)
    sink.close()
    return sink.tally.rows


# ---- batch ---------------------------------------------------------------

def node_of(header: dict[str, Any]) -> str | None:
    """The node a recording was made on: its header's `node`, else `host`."""
    node = header.get("node") or header.get("host")
    return node if isinstance(node, str) else None


def parse_time(text: str | float | None) -> float | None:
    """Unix seconds, or ISO 8601 (UTC unless it says otherwise), between
    1970 and 9999; ValueError says what is wrong."""
    if text is None:
        return None
    try:
        t = float(text)
    except ValueError:
        try:
            ts = pd.Timestamp(text)
        except (ValueError, TypeError, OverflowError):
            ts = pd.NaT
        if ts is pd.NaT:
            raise ValueError(f"cannot read time {text!r}: use ISO 8601 (2024-05-01T12:00:00Z) "
                             "or unix seconds") from None
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        t = ts.timestamp()
    if not TIME_MIN <= t < TIME_MAX + 1:     # also NaN
        raise TimeRangeError(f"time out of range: {text!r} (use a time from 1970 to 9999, "
                             "ISO 8601 or unix seconds)")
    return t


def _replay(path: str | os.PathLike[str], sink: Any, window_s: float, idle_timeouts: dict[str, float] | None,
            pair_window_s: float, since: float | None, until: float | None, cause: str | None,
            ram_bytes: int | None) -> tuple[Classifier, Any, dict[int, list[Fix]]]:
    reader, batches = iter_batches(path)
    first = next(batches, None)
    header = reader.header or {}
    names: dict[int, str] = {}
    for k, v in (header.get("netns_names") or {}).items():
        try:
            names[int(k)] = str(v)
        except (TypeError, ValueError):
            continue
    # A report can look ahead: the first resets of an idle-timeout pattern
    # get the label of the later ones (analysis/classify.py).
    clf = Classifier(window_s=window_s, idle_timeouts=idle_timeouts, pair_window_s=pair_window_s,
                     netns_names=names, ram_bytes=ram_bytes or header.get("mem_total"), look_ahead=True)
    sink.names = clf.context.names
    sink.node = node_of(header)
    fix_lists: dict[int, list[Fix]] = {}
    timed = since is not None or until is not None

    def take(vs: list[Verdict]) -> None:
        for v in vs:
            if cause is not None and v.cause != cause:
                continue
            events = None
            if timed:
                events = [e for e in v.events if (since is None or e["t"] >= since)
                          and (until is None or e["t"] <= until)]
                if not events:
                    continue
            sink.add(v, events)
            if v.fixes and id(v.fixes) not in fix_lists:
                fix_lists[id(v.fixes)] = v.fixes

    Pump(clf, take).run(batches if first is None else chain((first,), batches))
    return clf, reader, fix_lists


def _finish(tally: Tally, clf: Classifier, reader: Any, fix_lists: dict[int, list[Fix]],
            idle_timeouts: dict[str, float] | None) -> Summary:
    latest_ctx = clf.context.latest_ctx
    findings = audit(latest_ctx, idle_timeouts) if latest_ctx else []
    warnings = list(reader.warnings)
    if reader.totals is None and not reader.truncated:
        warnings.append(f"{reader.path}: no totals line (recording did not end cleanly)")
    if reader.totals and reader.totals.get("lost"):
        warnings.append(f"{reader.totals['lost']} events were lost in the kernel while recording")
    fixes = merge_fixes(f for fl in fix_lists.values() for f in fl)
    return summarize(tally, clf.context, findings, fixes, warnings,
                     ram_bytes=clf.ram_bytes, invalid=(reader.invalid, reader.first_invalid))


def report_recording(path: str | os.PathLike[str], window_s: float = 10.0,
                     idle_timeouts: dict[str, float] | None = None, pair_window_s: float = 1.0,
                     since: float | None = None, until: float | None = None,
                     cause: str | None = None, ram_bytes: int | None = None) -> tuple[pd.DataFrame, Summary]:
    """Replays a recording through the Classifier; returns (rows, summary).
    Rows come in incident order (the time of each incident's first reset;
    within an incident, sent before received). Filters apply after
    classification, so a reset just after `since` still sees the context
    recorded before it."""
    rows = Rows()
    clf, reader, fix_lists = _replay(path, rows, window_s, idle_timeouts, pair_window_s,
                                     since, until, cause, ram_bytes)
    summary = _finish(rows.tally, clf, reader, fix_lists, idle_timeouts)   # checks the time range first
    return rows.frame(), summary


def write_report(path: str | os.PathLike[str], out: TextIO, window_s: float = 10.0,
                 idle_timeouts: dict[str, float] | None = None, pair_window_s: float = 1.0,
                 since: float | None = None, until: float | None = None,
                 cause: str | None = None, ram_bytes: int | None = None,
                 writer_process: bool | None = None) -> tuple[int, Summary]:
    """The rows of report_recording as CSV, streamed into `out` (an open
    output): memory stays small for millions of resets. Returns (rows
    written, summary). Used by `rsttrace report -o`, `rsttrace record
    --csv` and the demo. `writer_process`: see CsvStream."""
    sink = CsvStream(out, writer_process=writer_process)
    try:
        clf, reader, fix_lists = _replay(path, sink, window_s, idle_timeouts, pair_window_s,
                                         since, until, cause, ram_bytes)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return sink.tally.rows, _finish(sink.tally, clf, reader, fix_lists, idle_timeouts)


# ---- several recordings (analysis/fleet.py) ----------------------------------

def write_fleet_report(paths: list[str], out: TextIO, writer_process: bool | None = None,
                       **opts: Any) -> tuple[int, Summary]:
    """write_report over several recordings (nodes' recordings, rotated
    files): one CSV in time order, both ends of a reset joined across
    nodes. `opts`: those of write_report and `tolerance_s`."""
    from .fleet import FleetReport
    fleet = FleetReport(paths, **opts)
    sink = CsvStream(out, writer_process=writer_process)
    try:
        fleet.run(sink)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return sink.tally.n, fleet.summary(sink.tally)


def report_fleet(paths: list[str], **opts: Any) -> tuple[pd.DataFrame, Summary]:
    """report_recording over several recordings (write_fleet_report)."""
    from .fleet import FleetReport
    fleet = FleetReport(paths, **opts)
    rows = Rows()
    fleet.run(rows)
    return rows.frame(), fleet.summary(rows.tally)


def summarize_fleet(paths: list[str], **opts: Any) -> Summary:
    from .fleet import FleetReport
    fleet = FleetReport(paths, **opts)
    sink = _Count()
    fleet.run(sink)
    return fleet.summary(sink.tally)


def summarize_recording(path: str | os.PathLike[str], window_s: float = 10.0,
                        idle_timeouts: dict[str, float] | None = None, pair_window_s: float = 1.0,
                        since: float | None = None, until: float | None = None,
                        cause: str | None = None, ram_bytes: int | None = None) -> Summary:
    """The summary of report_recording alone (no rows kept)."""
    sink = _Count()
    clf, reader, fix_lists = _replay(path, sink, window_s, idle_timeouts, pair_window_s,
                                     since, until, cause, ram_bytes)
    return _finish(sink.tally, clf, reader, fix_lists, idle_timeouts)
