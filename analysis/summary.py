"""The report's summary: what it counts as rows are written (`Tally`: a
few dicts, not a frame of every row), and the text and table made from
those counts, the context and the findings (`summarize`). Pure: no file
is read or written here.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .vocab import CAUSES, weight
from .config import Finding
from .context import ContextStore
from .findings import conntrack_episodes
from .fixes import Fix
from .safe import printable

# Times a report can show, in unix seconds: 1970 to the end of year 9999 (a
# CSV time is YYYY-MM-DDTHH:MM:SS.mmmZ).
TIME_MIN, TIME_MAX = 0, 253402300799


class TimeRangeError(ValueError):
    """A time a report cannot show (outside TIME_MIN..TIME_MAX)."""


def time_range_error(sec: Any) -> TimeRangeError:
    return TimeRangeError(f"time out of range: {sec} s since 1970 (rsttrace shows 1970 to 9999)")



class Tally:
    """What the summary counts, kept as rows are written (a few dicts, not
    a frame of every row): rows, incidents, time span, resets per cause,
    per flow and cause, per second, per node and cause, and the received
    resets joined across nodes per (sender node, receiver node, cause)."""

    def __init__(self) -> None:
        self.n = 0          # resets (a storm's row counts its `count`)
        self.rows = 0       # rows: reset records and reset_agg records
        self.incidents = 0
        self.ms_min: int | None = None
        self.ms_max: int | None = None
        self.causes: dict[str, int] = {}
        self.flows: dict[tuple, int] = {}      # (src, sport, dst, cause) -> rows, first seen first
        self.per_s: dict[int, int] = {}        # unix second -> rows
        self.nodes: dict[tuple, int] = {}      # (node, cause) -> rows
        self.pairs: dict[tuple, int] = {}      # (sender node, receiver node, cause) -> joined received resets

    def add(self, cause: str, events: list[dict[str, Any]], node: str | None = None) -> None:
        """Counts the rows of one verdict (records, for callers without a
        RowWriter); `node`: the recording's, where a record names none."""
        for e in events:
            self.row(cause, e.get("src"), e.get("sport"), e.get("dst"), round(e["t"] * 1000),
                     weight(e), e.get("node") or node, e.get("peer_node"), e.get("dir"))
        if events:
            self.incidents += 1

    def row(self, cause: str, src: Any, sport: Any, dst: Any, ms: int, count: int = 1,
            node: str | None = None, peer: str | None = None, direction: str | None = None) -> None:
        self.rows += 1
        self.n += count
        self.causes[cause] = self.causes.get(cause, 0) + count
        k = (node, cause)
        self.nodes[k] = self.nodes.get(k, 0) + count
        if peer is not None and direction == "recv":
            k = (peer, node, cause)
            self.pairs[k] = self.pairs.get(k, 0) + count
        k = (src, sport, dst, cause)
        self.flows[k] = self.flows.get(k, 0) + count
        sec = ms // 1000
        self.per_s[sec] = self.per_s.get(sec, 0) + count
        if self.ms_min is None or ms < self.ms_min:
            self.ms_min = ms
        if self.ms_max is None or ms > self.ms_max:
            self.ms_max = ms

    def top_flows(self, top: int, rank: dict[str, int]) -> list[tuple[tuple, int, str]]:
        """((src, sport, dst), rows, main cause), most rows first; ties in
        order of first appearance; a tie between causes goes to the better
        ranked one."""
        per: dict[tuple, dict[str, int]] = {}
        for (src, sport, dst, cause), k in self.flows.items():
            per.setdefault((src, sport, dst), {})[cause] = k
        best = heapq.nlargest(top, per.items(), key=lambda kv: sum(kv[1].values()))
        return [(flow, sum(cs.values()), min(cs.items(), key=lambda kv: (-kv[1], rank.get(kv[0], 99)))[0])
                for flow, cs in best]

    def over_time(self, step: int) -> list[tuple[int, int]]:
        """(bin start in unix s, rows) per `step` seconds, ascending."""
        bins: dict[int, int] = {}
        for sec, k in self.per_s.items():
            b = sec - sec % step
            bins[b] = bins.get(b, 0) + k
        return sorted(bins.items())



SUMMARY_COLUMNS = ("section", "name", "value", "detail")


@dataclass
class Summary:
    text: str
    rows: list[tuple[str, str, Any, str]]   # SUMMARY_COLUMNS, the --summary CSV
    warnings: list[str] = field(default_factory=list)

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(SUMMARY_COLUMNS))


def _flow(src: Any, sport: Any, dst: Any) -> str:
    return f"{src}:{sport} -> {dst}"


def summarize(tally: Tally, context: ContextStore | dict[str, ContextStore] | None, findings: list[Finding],
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

        lines += _fleet(tally, rows, top)

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
        if isinstance(context, dict):      # several nodes: each its own, named
            ct_lines = []
            for node, ctx in context.items():
                mine = _conntrack_trouble(ctx, rows, ram_bytes)
                if mine:
                    ct_lines += [f"  node {printable(node)}:"] + ["  " + x for x in mine]
        else:
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
    return Summary("\n".join(lines) + "\n", rows, list(warnings or ()))


def _fleet(tally: Tally, rows: list, top: int) -> list[str]:
    """Resets per node and per node pair, when the resets come from more
    than one node or were joined across nodes (a report over several
    nodes' recordings): nothing for one recording."""
    per_node: dict[Any, dict[str, int]] = {}
    for (node, cause), k in tally.nodes.items():
        per_node.setdefault(node, {})[cause] = k
    if len(per_node) < 2 and not tally.pairs:
        return []
    rank = {c: i for i, c in enumerate(CAUSES)}

    def causes(cs: dict[str, int]) -> str:
        return ", ".join(f"{c} {k}" for c, k in sorted(cs.items(), key=lambda kv: (-kv[1], rank.get(kv[0], 99))))

    out = ["", "resets per node (cause: resets)"]
    for node, cs in sorted(per_node.items(), key=lambda kv: (-sum(kv[1].values()), str(kv[0]))):
        name = printable(node if node is not None else "?")
        n = sum(cs.values())
        out.append(f"  {name[:24]:<24} {n:>9}  {printable(causes(cs))}")
        rows.append(("node", name, n, printable(causes(cs))))
    per_pair: dict[tuple, dict[str, int]] = {}
    for (snd, rcv, cause), k in tally.pairs.items():
        per_pair.setdefault((snd, rcv), {})[cause] = k
    out.append("")
    out.append(f"top {top} node pairs (reset sender node -> receiver node, joined resets)")
    if not per_pair:
        out.append("  none joined")
    best = heapq.nlargest(top, per_pair.items(), key=lambda kv: sum(kv[1].values()))
    for (snd, rcv), cs in best:
        pair = printable(f"{snd} -> {rcv}")
        n = sum(cs.values())
        out.append(f"  {pair[:40]:<40} {n:>7}  {printable(causes(cs))}")
        rows.append(("node_pair", pair, n, printable(causes(cs))))
    return out


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
