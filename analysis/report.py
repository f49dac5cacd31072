"""Postmortem reports: one CSV row per reset, and a summary.

Batch is a replay through the same `Classifier` the live screen uses. Rows
are gathered column by column (no per-row objects) and pandas builds the
frame and does the aggregation.
"""

from __future__ import annotations

import gc
import operator
import os
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterable, TextIO

import numpy as np
import pandas as pd

from rsttrace.outfile import WriterProcess

from .batches import iter_batches
from .classify import CAUSES, Classifier, Verdict
from .config import Finding, audit
from .csvout import ROW_FIELDS, TIME_MAX, TIME_MIN, RowWriter, Tally, TimeRangeError, time_range_error
from .context import ContextStore
from .findings import conntrack_episodes
from .fixes import Fix, merge_fixes
from .safe import FORMULA_START, csv_text, has_control, printable

CSV_COLUMNS = ["time", "direction", "netns", "pod", "pid", "comm", "src", "sport", "dst", "dport",
               "state", "kernel_reason", "idle_s", "keepalive_s", "cause", "confidence", "evidence", "fix"]
EXTRA_COLUMNS = ["incident", "netns_name", "sender_netns", "receiver_netns", "family", "cookie"]
COLUMNS = CSV_COLUMNS + EXTRA_COLUMNS
_INT_COLUMNS = ("netns", "pid", "sport", "dport", "keepalive_s", "incident", "sender_netns",
                "receiver_netns", "family")
_TIME_COLUMNS = ("time",)


def fix_text(fixes: list[Fix]) -> str:
    """The fix cell: exact commands first, then settings that live in a pod
    spec or a client pool (their snippets are in the summary)."""
    parts = [f.command for f in fixes if f.command]
    parts += [f"{f.scope}: {f.key}={f.value}" for f in fixes if not f.command]
    return " ; ".join(parts)


class Rows:
    """Column lists of the report, filled verdict by verdict."""

    def __init__(self, names: dict[int, str] | None = None):
        self.cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        self.names = names if names is not None else {}
        self._strings: dict[str, str] = {}      # one object per distinct host string
        self._fix_text: dict[int, tuple[list[Fix], str]] = {}
        self.tally = Tally()

    def __len__(self) -> int:
        return len(self.cols["time"])

    def _s(self, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, str):
            v = str(v)
        return self._strings.setdefault(v, v)

    def add(self, v: Verdict, events: list[dict[str, Any]] | None = None) -> None:
        c = self.cols
        hit = self._fix_text.get(id(v.fixes))
        if hit is None or hit[0] is not v.fixes:
            if len(self._fix_text) > 8192:
                self._fix_text.clear()
            hit = self._fix_text[id(v.fixes)] = (v.fixes, fix_text(v.fixes))
        fix = hit[1]
        s = self._s
        events = v.events if events is None else events
        self.tally.add(v.cause, events)
        for e in events:
            ns = e.get("netns")
            idle = e.get("idle_ms")
            c["time"].append(e.get("t"))
            c["direction"].append(s(e.get("dir")))
            c["netns"].append(ns)
            c["pod"].append(s(e.get("pod")))
            c["pid"].append(e.get("pid"))
            c["comm"].append(s(e.get("comm")))
            c["src"].append(s(e.get("src")))
            c["sport"].append(e.get("sport"))
            c["dst"].append(s(e.get("dst")))
            c["dport"].append(e.get("dport"))
            c["state"].append(s(e.get("state")) or None)
            c["kernel_reason"].append(s(e.get("reason")))
            c["idle_s"].append(idle / 1000.0 if isinstance(idle, (int, float)) else None)
            c["keepalive_s"].append(e.get("ka_time_s") if e.get("keepalive") else None)
            c["cause"].append(v.cause)
            c["confidence"].append(v.confidence)
            c["evidence"].append(v.evidence)
            c["fix"].append(fix)
            c["incident"].append(v.incident)
            c["netns_name"].append(self.names.get(ns))
            c["sender_netns"].append(v.sender_netns)
            c["receiver_netns"].append(v.receiver_netns)
            c["family"].append(e.get("family"))
            c["cookie"].append(e.get("cookie"))

    def frame(self) -> pd.DataFrame:
        data: dict[str, Any] = {}
        for name, vals in self.cols.items():
            if name in _TIME_COLUMNS:
                arr = np.array(vals, dtype="float64")
                data[name] = pd.to_datetime((arr * 1000).round().astype("int64"), unit="ms", utc=True) \
                    if len(arr) else pd.Series([], dtype="datetime64[ms, UTC]")
            elif name in _INT_COLUMNS:
                data[name] = pd.array(np.array(vals, dtype="float64"), dtype="Int64") \
                    if len(vals) else pd.array([], dtype="Int64")
            elif name == "idle_s":
                data[name] = np.array(vals, dtype="float64")
            else:
                data[name] = np.array(vals, dtype=object)
        return pd.DataFrame(data, columns=COLUMNS)


def verdict_rows(verdicts: Iterable[Verdict], names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    rows = Rows(names)
    for v in verdicts:
        rows.add(v)
    cols = rows.cols
    return [dict(zip(COLUMNS, vals)) for vals in zip(*(cols[c] for c in COLUMNS))]


def to_frame(verdicts: Iterable[Verdict] | Rows, names: dict[int, str] | None = None) -> pd.DataFrame:
    if isinstance(verdicts, Rows):
        return verdicts.frame()
    rows = Rows(names)
    for v in verdicts:
        rows.add(v)
    return rows.frame()


def _neutralise_series(s: pd.Series) -> pd.Series:
    # Check each distinct value once: host strings repeat a lot.
    uniq = pd.unique(s.dropna())
    bad = {u: csv_text(u) for u in uniq if isinstance(u, str) and (u.startswith(FORMULA_START) or has_control(u))}
    if not bad:
        return s
    out = s.astype(object).copy()
    mask = s.isin(list(bad))
    out[mask] = s[mask].map(bad)
    return out


def csv_ready(df: pd.DataFrame) -> pd.DataFrame:
    """Times as ISO 8601 UTC with ms; every text cell formula-safe."""
    out = {}
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_datetime64_any_dtype(s.dtype):
            ms = s.dt.tz_convert("UTC").dt.tz_localize(None) if isinstance(s.dtype, pd.DatetimeTZDtype) else s
            arr = ms.to_numpy(dtype="datetime64[ms]")
            txt = np.char.add(np.datetime_as_string(arr, unit="ms"), "Z").astype(object)
            txt[pd.isna(s).to_numpy()] = None
            out[col] = txt
        elif s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
            out[col] = _neutralise_series(s)
        else:
            out[col] = s
    return pd.DataFrame(out, columns=list(df.columns))


def write_csv(df: pd.DataFrame, out: TextIO) -> None:
    """The frame as CSV text into `out`, an open output (`OutFile`): where
    and how the bytes land is rsttrace.outfile's business."""
    if not hasattr(out, "write"):
        raise TypeError("write_csv writes to an open output (rsttrace.outfile.OutFile), not a path")
    out.write(csv_ready(df).to_csv(None, index=False, na_rep="", lineterminator="\n"))


class CsvStream:
    """Writes report rows into `out` (an open output) as verdicts arrive,
    without holding them: the bytes equal `write_csv(to_frame(verdicts))`.
    `close()` writes what is pending; `abort()` stops. It keeps only what
    the summary counts (`tally`, complete after `close()`).

    Formatting a million rows costs about as much as classifying them, so
    where it can (fork, no other thread running) the rows go through a pipe
    to a writer process that formats them while this one classifies the
    next batch: the same `RowWriter` code, so the same bytes."""

    def __init__(self, out: TextIO, names: dict[int, str] | None = None,
                 writer_process: bool | None = None):
        self._fh = out
        self.names = names if names is not None else {}
        out.write(",".join(COLUMNS) + "\n")
        self._fix_text: dict[int, tuple[list[Fix], str]] = {}
        self.n = 0
        self._pending: list[tuple[tuple, list[tuple]]] = []
        self._pending_rows = 0
        self._child: WriterProcess | None = None
        if writer_process is None:
            writer_process = hasattr(os, "fork") and threading.active_count() == 1
        if writer_process:
            try:
                out.flush()     # the header, before the child inherits the file
                self._child = WriterProcess(partial(_format_rows, out))
            except OSError:
                self._child = None
        if self._child is None:
            self._rows: RowWriter | None = RowWriter(out)
            self.tally = self._rows.tally
        else:
            self._rows = None
            self.tally = Tally()    # filled by close()

    def add(self, v: Verdict, events: list[dict[str, Any]] | None = None) -> None:
        fixes = v.fixes
        fix = ""
        if fixes:
            hit = self._fix_text.get(id(fixes))
            if hit is None or hit[0] is not fixes:
                if len(self._fix_text) > 8192:
                    self._fix_text.clear()
                hit = self._fix_text[id(fixes)] = (fixes, fix_text(fixes))
            fix = hit[1]
        names = self.names
        rows = []
        for e in v.events if events is None else events:
            try:
                fields = _row_fields(e)
            except KeyError:
                fields = tuple(map(e.get, ROW_FIELDS))
            rows.append(fields + (e.get("pod"), names.get(fields[2])))
        vc = (v.cause, v.confidence, v.evidence, fix, v.incident, v.sender_netns, v.receiver_netns)
        self.n += 1
        if self._rows is not None:
            self._rows.add(vc, rows)
            return
        self._pending.append((vc, rows))
        self._pending_rows += len(rows)
        if self._pending_rows >= _PIPE_ROWS:
            self._send()

    def _send(self) -> None:
        batch, self._pending, self._pending_rows = self._pending, [], 0
        if batch:
            self._child.send(batch)

    def close(self) -> None:
        """Writes every row still pending; the output is then complete."""
        if self._rows is not None:
            self._rows.flush()
        else:
            self._send()
            child, self._child = self._child, None
            self.tally = child.finish()

    def abort(self) -> None:
        if self._child is not None:
            child, self._child = self._child, None
            child.kill()


_PIPE_ROWS = 2048    # rows per message to the writer process (~170 kB)


def _format_rows(out: TextIO, batches: Iterable[list]) -> Tally:
    """The writer process: formats batches of (verdict cells, rows) into
    `out` and returns what it counted."""
    writer = RowWriter(out)
    add = writer.add
    for batch in batches:
        for vc, rows in batch:
            add(vc, rows)
    writer.flush()
    out.flush()
    return writer.tally


# The fields of a reset record a CSV row shows, in one C call; records that
# lack one (hand-written, older) take the .get path.
_row_fields = operator.itemgetter(*ROW_FIELDS)


# ---- summary ---------------------------------------------------------------

@dataclass
class Summary:
    text: str
    frame: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def _flow(src: Any, sport: Any, dst: Any) -> str:
    return f"{src}:{sport} -> {dst}"


def summarize(tally: Tally, context: ContextStore | None, findings: list[Finding],
              fixes: list[Fix] | None = None, warnings: list[str] | None = None,
              top: int = 5, bins: int = 12, ram_bytes: int | None = None,
              invalid: tuple[int, str | None] = (0, None)) -> Summary:
    """Resets per cause, top flows, resets over time, config findings,
    conntrack trouble (including what caused no reset) and the fixes.
    `invalid`: records of the recording that did not validate (skipped),
    and the first of them."""
    rows: list[tuple[str, str, Any, str]] = []     # section, name, value, detail
    lines: list[str] = []
    n = tally.n
    incidents = tally.incidents
    for ms in (tally.ms_min, tally.ms_max):
        if ms is not None and not TIME_MIN <= ms // 1000 <= TIME_MAX:
            raise time_range_error(ms // 1000)
    if n:
        t0 = pd.Timestamp(tally.ms_min, unit="ms", tz="UTC")
        t1 = pd.Timestamp(tally.ms_max, unit="ms", tz="UTC")
        lines.append(f"{n} resets in {incidents} incidents, "
                     f"{t0:%Y-%m-%d %H:%M:%S} to {t1:%H:%M:%S} UTC")
    else:
        lines.append("no resets")
    rows.append(("total", "resets", n, f"{incidents} incidents"))
    if invalid[0]:
        lines.append(f"{invalid[0]} record{'s' if invalid[0] != 1 else ''} did not validate "
                     f"(first: {printable(invalid[1])}): not counted above")
        rows.append(("total", "invalid_records", invalid[0], printable(invalid[1])))

    if n:
        lines.append("")
        lines.append("resets per cause")
        per = tally.causes
        for cause in CAUSES:
            k = int(per.get(cause, 0))
            if k:
                lines.append(f"  {cause:<18} {k:>9}  {k / n:6.1%}")
                rows.append(("cause", cause, k, f"{k / n:.4f}"))

        lines.append("")
        lines.append(f"top {top} flows (reset sender -> reset host)")
        for (src, sport, dst), k, main in tally.top_flows(top, {c: i for i, c in enumerate(CAUSES)}):
            flow = printable(_flow(src, sport, dst))
            lines.append(f"  {flow[:52]:<52} {int(k):>7}  {main}")
            rows.append(("flow", flow, int(k), main))

        lines.append("")
        span = (t1 - t0).total_seconds()
        width = max(1.0, span / bins)
        step = next((s for s in (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 21600, 86400) if s >= width), 86400)
        lines.append(f"resets over time (per {step} s)")
        per_bin = tally.over_time(step)
        peak = max(k for _, k in per_bin)
        for sec, k in per_bin:
            ts = pd.Timestamp(sec, unit="s", tz="UTC")
            bar = "#" * max(1, round(30 * int(k) / peak))
            lines.append(f"  {ts:%H:%M:%S} {int(k):>9} {bar}")
            rows.append(("time", f"{ts:%Y-%m-%dT%H:%M:%SZ}", int(k), f"{step}s"))

    if findings:
        lines.append("")
        lines.append("config findings")
        for f in findings:
            lines.append(f"  {f.severity}: {printable(f.message)}")
            rows.append(("finding", f.key, f.severity, printable(f.message)))

    if context is not None:
        ct_lines = _conntrack_trouble(context, rows, ram_bytes)
        if ct_lines:
            lines.append("")
            lines.append("conntrack trouble (with or without resets)")
            lines += ct_lines

    if fixes:
        lines.append("")
        lines.append("fixes")
        for f in fixes:
            where = f.scope if f.netns is None else f"{f.scope} {printable(f.netns_name or f.netns)}"
            tag = " (trade-off)" if f.tradeoff else ""
            lines.append(f"  [{f.cause}] {where}: {f.key} {f.current} -> {f.value}{tag}")
            if f.command:
                lines.append(f"      {printable(f.command)}")
            if f.snippet:
                lines += [f"      {printable(x)}" for x in f.snippet.rstrip("\n").split("\n")]
            rows.append(("fix", f.key, f.value, printable(f.command or f.snippet or "")))
            if len(f.covers) > 1:
                lines.append("      covers:")
                for c in f.covers:
                    lines.append(f"        {printable(c)}")
                    rows.append(("fix_covers", f.key, f.value, printable(c)))
    for w in warnings or ():
        rows.append(("warning", "", "", printable(w)))
    frame = pd.DataFrame(rows, columns=["section", "name", "value", "detail"])
    return Summary("\n".join(lines) + "\n", frame, list(warnings or ()))


def _conntrack_trouble(ctx: ContextStore, rows: list, ram_bytes: int | None = None) -> list[str]:
    out: list[str] = []
    for ep in conntrack_episodes(ctx, ram_bytes=ram_bytes):
        ts = pd.Timestamp(ep.t_first, unit="s", tz="UTC")
        dur = ep.t_last - ep.t_first
        out.append(f"  table full at {ts:%H:%M:%S} for {dur:.0f} s in {printable(ep.label)} ({ep.confidence}):")
        out.append(f"    {printable(ep.facts)}")
        rows.append(("ct_full_episode", f"{ts:%Y-%m-%dT%H:%M:%SZ}", ep.raw.log_lines,
                     f"{dur:.1f}s {printable(ep.label)}: {printable(ep.evidence)}"))
    if ctx.episodes_dropped:
        out.append(f"  ... {ctx.episodes_dropped} more episodes not kept")
    for ns, tot in sorted(ctx.totals.items()):
        parts = []
        if tot.first is not None and tot.last is not None:
            for key in ("drop", "early_drop", "insert_failed", "invalid"):
                a, b = tot.first.get(key), tot.last.get(key)
                if isinstance(a, int) and isinstance(b, int) and b > a:
                    parts.append(f"{key} +{b - a}")
                    rows.append(("conntrack", printable(ctx.label(ns)), b - a, key))
        if tot.ct_drops:
            parts.append(f"{tot.ct_drops} netfilter drops")
            rows.append(("conntrack", printable(ctx.label(ns)), tot.ct_drops, "netfilter_drops"))
        if tot.max and tot.peak_count:
            parts.append(f"peak {tot.peak_count}/{tot.max}")
        if parts and (len(parts) > 1 or not parts[0].startswith("peak")):
            out.append(f"  {printable(ctx.label(ns))}: " + ", ".join(parts))
    return out


# ---- batch ---------------------------------------------------------------

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

    # The replay makes millions of short-lived dicts that never form
    # cycles (records, verdicts): reference counting frees them, and the
    # cyclic collector would only walk the live ones again and again
    # (a third of the run time on a million resets).
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        if first is not None:
            take(clf.feed_many(first))
            for batch in batches:
                take(clf.feed_many(batch))
        take(clf.flush())
    finally:
        if gc_was_on:
            gc.enable()
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
                 cause: str | None = None, ram_bytes: int | None = None) -> tuple[int, Summary]:
    """Same as report_recording + write_csv, streaming into `out` (an open
    output): memory stays small for millions of resets. Returns (rows
    written, summary). Used by `rsttrace report -o` and `rsttrace record --csv`."""
    sink = CsvStream(out)
    try:
        clf, reader, fix_lists = _replay(path, sink, window_s, idle_timeouts, pair_window_s,
                                         since, until, cause, ram_bytes)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return sink.tally.n, _finish(sink.tally, clf, reader, fix_lists, idle_timeouts)
