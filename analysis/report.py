"""Postmortem reports: one CSV row per reset, and a summary.

Batch is a replay through the same `Classifier` the live screen uses. Rows
are gathered column by column (no per-row objects) and pandas builds the
frame and does the aggregation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .classify import CAUSES, Classifier, Verdict
from .config import Finding, audit
from .context import ContextStore
from .fixes import Fix
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
        for e in v.events if events is None else events:
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


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Atomic: a temporary file in the same directory, then rename, so a
    failure never leaves half a report."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        csv_ready(df).to_csv(tmp, index=False, na_rep="", lineterminator="\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def _cell(v: Any) -> str:
    """One CSV cell as pandas writes it (minimal quoting), formula-safe, one line."""
    if v is None:
        return ""
    if not isinstance(v, str):
        return str(v)
    v = csv_text(v)
    if "," in v or '"' in v or "\n" in v or "\r" in v:
        return '"' + v.replace('"', '""') + '"'
    return v


class CsvStream:
    """Writes report rows as verdicts arrive, without holding them: the
    bytes equal `write_csv(to_frame(verdicts))`. Atomic like write_csv:
    `close()` renames the finished file into place, `abort()` removes it.
    It keeps only what the summary aggregates (time, cause, flow)."""

    def __init__(self, path: str | os.PathLike[str], names: dict[int, str] | None = None):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.names = names if names is not None else {}
        self._fh = open(self.tmp, "w", encoding="utf-8", newline="")
        self._fh.write(",".join(COLUMNS) + "\n")
        self._buf: list[str] = []
        self._cells: dict[Any, str] = {}
        self._sec: dict[int, str] = {}
        self._fix_text: dict[int, tuple[list[Fix], str]] = {}
        self.n = 0
        self.agg: dict[str, list[Any]] = {"time": [], "cause": [], "incident": [], "src": [], "sport": [], "dst": []}

    def _c(self, v: Any) -> str:
        hit = self._cells.get(v)
        if hit is None:
            if len(self._cells) > 65536:
                self._cells.clear()
            hit = self._cells[v] = _cell(v)
        return hit

    def _time(self, t: Any) -> str:
        if not isinstance(t, (int, float)):
            return ""
        ms = round(t * 1000)
        sec, frac = divmod(ms, 1000)
        p = self._sec.get(sec)
        if p is None:
            if len(self._sec) > 65536:
                self._sec.clear()
            p = self._sec[sec] = str(np.datetime64(sec, "s"))
        return f"{p}.{frac:03d}Z"

    def add(self, v: Verdict, events: list[dict[str, Any]] | None = None) -> None:
        hit = self._fix_text.get(id(v.fixes))
        if hit is None or hit[0] is not v.fixes:
            if len(self._fix_text) > 8192:
                self._fix_text.clear()
            hit = self._fix_text[id(v.fixes)] = (v.fixes, fix_text(v.fixes))
        c, cell = self._c, _cell
        mid = f"{c(v.cause)},{c(v.confidence)},{cell(v.evidence)},{c(hit[1])},{v.incident}"
        tail = f"{'' if v.sender_netns is None else v.sender_netns},{'' if v.receiver_netns is None else v.receiver_netns}"
        agg = self.agg
        buf = self._buf
        for e in v.events if events is None else events:
            g = e.get
            ns = g("netns")
            idle = g("idle_ms")
            pid = g("pid")
            ka = g("ka_time_s") if g("keepalive") else None
            fam = g("family")
            ck = g("cookie")
            t = g("t")
            buf.append(
                f"{self._time(t)},{c(g('dir'))},{'' if ns is None else ns},{c(g('pod'))},"
                f"{'' if pid is None else pid},{c(g('comm'))},{c(g('src'))},{c(g('sport'))},{c(g('dst'))},"
                f"{c(g('dport'))},{c(g('state') or None)},{c(g('reason'))},"
                f"{idle / 1000.0 if isinstance(idle, (int, float)) else ''},{'' if ka is None else ka},"
                f"{mid},{c(self.names.get(ns))},{tail},{'' if fam is None else fam},{'' if ck is None else ck}\n")
            agg["time"].append(t)
            agg["cause"].append(v.cause)
            agg["incident"].append(v.incident)
            agg["src"].append(g("src"))
            agg["sport"].append(g("sport"))
            agg["dst"].append(g("dst"))
        self.n += 1
        if len(buf) >= 8192:
            self._fh.write("".join(buf))
            buf.clear()

    def frame(self) -> pd.DataFrame:
        """What the summary needs, as a frame (time, cause, incident, flow)."""
        a = self.agg
        t = np.array(a["time"], dtype="float64")
        return pd.DataFrame({
            "time": pd.to_datetime((t * 1000).round().astype("int64"), unit="ms", utc=True),
            "cause": pd.Categorical(a["cause"], categories=list(CAUSES)),
            "incident": np.array(a["incident"], dtype="int64"),
            "src": np.array(a["src"], dtype=object), "sport": np.array(a["sport"], dtype=object),
            "dst": np.array(a["dst"], dtype=object)})

    def close(self) -> None:
        self._fh.write("".join(self._buf))
        self._buf.clear()
        self._fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._fh.close()
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


# ---- summary ---------------------------------------------------------------

@dataclass
class Summary:
    text: str
    frame: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def _flow(src: Any, sport: Any, dst: Any) -> str:
    return f"{src}:{sport} -> {dst}"


def summarize(df: pd.DataFrame, context: ContextStore | None, findings: list[Finding],
              fixes: list[Fix] | None = None, warnings: list[str] | None = None,
              top: int = 5, bins: int = 12) -> Summary:
    """Resets per cause, top flows, resets over time, config findings,
    conntrack trouble (including what caused no reset) and the fixes."""
    rows: list[tuple[str, str, Any, str]] = []     # section, name, value, detail
    lines: list[str] = []
    n = len(df)
    incidents = int(df["incident"].nunique()) if n else 0
    if n:
        t0, t1 = df["time"].min(), df["time"].max()
        lines.append(f"{n} resets in {incidents} incidents, "
                     f"{t0:%Y-%m-%d %H:%M:%S} to {t1:%H:%M:%S} UTC")
    else:
        lines.append("no resets")
    rows.append(("total", "resets", n, f"{incidents} incidents"))

    if n:
        lines.append("")
        lines.append("resets per cause")
        per = df["cause"].value_counts()
        for cause in CAUSES:
            k = int(per.get(cause, 0))
            if k:
                lines.append(f"  {cause:<18} {k:>9}  {k / n:6.1%}")
                rows.append(("cause", cause, k, f"{k / n:.4f}"))

        lines.append("")
        lines.append(f"top {top} flows (reset sender -> reset host)")
        g = df.groupby(["src", "sport", "dst"], sort=False, dropna=False).size().nlargest(top)
        for (src, sport, dst), k in g.items():
            sub = df.loc[(df["src"] == src) & (df["sport"] == sport) & (df["dst"] == dst), "cause"]
            main = sub.value_counts().index[0]
            flow = printable(_flow(src, sport, dst))
            lines.append(f"  {flow[:52]:<52} {int(k):>7}  {main}")
            rows.append(("flow", flow, int(k), main))

        lines.append("")
        span = (t1 - t0).total_seconds()
        width = max(1.0, span / bins)
        step = next((s for s in (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 21600, 86400) if s >= width), 86400)
        lines.append(f"resets over time (per {step} s)")
        per_bin = df["time"].dt.floor(f"{step}s").value_counts().sort_index()
        peak = int(per_bin.max())
        for ts, k in per_bin.items():
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
        ct_lines = _conntrack_trouble(context, rows)
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
    for w in warnings or ():
        rows.append(("warning", "", "", printable(w)))
    frame = pd.DataFrame(rows, columns=["section", "name", "value", "detail"])
    return Summary("\n".join(lines) + "\n", frame, list(warnings or ()))


def _conntrack_trouble(ctx: ContextStore, rows: list) -> list[str]:
    out: list[str] = []
    for t_first, t_last, count, nss in ctx.full_episodes:
        named = ", ".join(printable(ctx.label(ns)) for ns in sorted(nss, key=lambda x: (x is None, x or 0))
                          if ns is not None) or "netns not named in the log"
        ts = pd.Timestamp(t_first, unit="s", tz="UTC")
        dur = t_last - t_first
        out.append(f"  table full at {ts:%H:%M:%S} for {dur:.0f} s ({count} log lines): {named}")
        rows.append(("ct_full_episode", f"{ts:%Y-%m-%dT%H:%M:%SZ}", count, f"{dur:.1f}s {named}"))
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

def _unique_fixes(fix_lists: Iterable[list[Fix]]) -> list[Fix]:
    seen: dict[tuple, Fix] = {}
    for fl in fix_lists:
        for f in fl:
            seen.setdefault((f.cause, f.scope, f.netns, f.key, str(f.value)), f)
    return list(seen.values())


def parse_time(text: str | float | None) -> float | None:
    """Unix seconds, or ISO 8601 (UTC unless it says otherwise)."""
    if text is None or isinstance(text, (int, float)):
        return text
    try:
        return float(text)
    except ValueError:
        pass
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise ValueError(f"cannot read time {text!r}: use ISO 8601 (2024-05-01T12:00:00Z) "
                         "or unix seconds") from None
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.timestamp()


def _replay(path: str | os.PathLike[str], sink: Any, window_s: float, idle_timeouts: dict[str, float] | None,
            pair_window_s: float, since: float | None, until: float | None, cause: str | None,
            ram_bytes: int | None) -> tuple[Classifier, Any, dict[str, Any] | None, dict[int, list[Fix]]]:
    from rsttrace.tracer.recording import iter_recording

    reader, it = iter_recording(path)
    first = next(it, None)
    header = reader.header or {}
    names: dict[int, str] = {}
    for k, v in (header.get("netns_names") or {}).items():
        try:
            names[int(k)] = str(v)
        except (TypeError, ValueError):
            continue
    clf = Classifier(window_s=window_s, idle_timeouts=idle_timeouts, pair_window_s=pair_window_s,
                     netns_names=names, ram_bytes=ram_bytes or header.get("mem_total"))
    sink.names = clf.context.names
    latest_ctx: dict[str, Any] | None = None
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

    feed = clf.feed
    if first is not None:
        for rec in _chain(first, it):
            if rec.get("kind") == "ctx":
                latest_ctx = rec
            vs = feed(rec)
            if vs:
                take(vs)
    take(clf.flush())
    return clf, reader, latest_ctx, fix_lists


def _finish(df: pd.DataFrame, clf: Classifier, reader: Any, latest_ctx: dict[str, Any] | None,
            fix_lists: dict[int, list[Fix]], idle_timeouts: dict[str, float] | None) -> Summary:
    findings = audit(latest_ctx, idle_timeouts) if latest_ctx else []
    warnings = list(reader.warnings)
    if reader.totals and reader.totals.get("lost"):
        warnings.append(f"{reader.totals['lost']} events were lost in the kernel while recording")
    return summarize(df, clf.context, findings, _unique_fixes(fix_lists.values()), warnings)


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
    clf, reader, latest_ctx, fix_lists = _replay(path, rows, window_s, idle_timeouts, pair_window_s,
                                                 since, until, cause, ram_bytes)
    df = rows.frame()
    return df, _finish(df, clf, reader, latest_ctx, fix_lists, idle_timeouts)


def write_report(path: str | os.PathLike[str], csv_path: str | os.PathLike[str], window_s: float = 10.0,
                 idle_timeouts: dict[str, float] | None = None, pair_window_s: float = 1.0,
                 since: float | None = None, until: float | None = None,
                 cause: str | None = None, ram_bytes: int | None = None) -> tuple[int, Summary]:
    """Same as report_recording + write_csv, streaming: memory stays small
    for millions of resets. Returns (rows written, summary). Used by
    `rsttrace report -o` and `rsttrace record --csv`."""
    sink = CsvStream(csv_path)
    try:
        clf, reader, latest_ctx, fix_lists = _replay(path, sink, window_s, idle_timeouts, pair_window_s,
                                                     since, until, cause, ram_bytes)
        df = sink.frame()
        summary = _finish(df, clf, reader, latest_ctx, fix_lists, idle_timeouts)
    except BaseException:
        sink.abort()
        raise
    sink.close()
    return len(df), summary


def _chain(first: dict[str, Any], it: Any):
    yield first
    yield from it
