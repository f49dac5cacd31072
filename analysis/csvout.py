"""The report's CSV: its columns, and the one function that writes its
rows, used by `rsttrace report -o`, `record --csv`, the demo and the live
screen's export alike, so their bytes agree.

The columns come from the field catalog (rsttrace.schema.catalog: each
reset field names its column and format; `CSV_ORDER` places them among the
verdict's). A million rows per run need the formatting of a row to be one
f-string over local variables with a cache of rendered cells, not a loop
over cells: so the row formatter is compiled once, at import, from the
catalog (`RowWriter.add`; `python -c "from rsttrace.analysis import
csvout; print(csvout.SOURCE)"` shows it).

Rows come in per verdict: the verdict's cells (`VERDICT_CELLS`) and, per
reset record, its `ROW_FIELDS`, then `ROW_EXTRAS`: the report's own
values (its node, the node at the other end), the name of its namespace and
the resets it stands for (`rows_of(records, names, node)`: 1, or a storm's
`reset_agg` count, which the summary's counts are weighted by).
"""

from __future__ import annotations

import operator
import time
from typing import Any, Iterable, TextIO

from rsttrace.schema import catalog

from .safe import csv_text
from .summary import TIME_MAX, TIME_MIN, Tally, time_range_error

#: (column, the reset field it shows or None), in order
SPECS = catalog.csv_columns()
#: The CSV's header, in order.
COLUMNS: list[str] = [c.column for c, _ in SPECS]
#: The verdict's attributes a row shows, in the order RowWriter.add takes
#: them, then the fix text (made from its fixes by the caller).
VERDICT_CELLS = tuple(c.column for c, f in SPECS if f is None and c.source == "verdict" and c.column != "fix") \
    + ("fix",)
#: Per row after the ROW_FIELDS: the report's values (`row` columns, taken
#: from the record where a fleet report set them), the namespace's name and
#: the resets the row stands for.
ROW_EXTRAS = tuple(c.column for c, f in SPECS if f is None and c.source == "row") + ("netns_name", "count")
# The summary's counts per row: the time, the flow and the direction (tally in RowWriter.add)
_TALLY_FIELDS = ("t", "src", "sport", "dst", "dir")
_needed = list(dict.fromkeys([f.name for _, f in SPECS if f is not None]
                             + [c.only_if for c, _ in SPECS if c.only_if] + list(_TALLY_FIELDS)))
_later = {f.name for f in catalog.RESET.fields if f.later}
#: The reset fields a row needs, in the row tuple's order: those every
#: recording has first, taken in one C call (`operator.itemgetter`); those
#: added later (older recordings lack them) with .get.
ROW_FIELDS = tuple([n for n in _needed if n not in _later] + [n for n in _needed if n in _later])


def _rows_source() -> str:
    first = [n for n in ROW_FIELDS if n not in _later]
    rest = "".join(f"e.get({n!r}), " for n in ROW_FIELDS if n in _later)
    netns = ROW_FIELDS.index("netns")
    # the node a fleet report set on the record, else the recording's; the
    # namespace's name it set there (its node's), else the recording's
    extras = "".join("(e.get('node') or node), " if c == "node" else f"e.get({c!r}), "
                     for c in ROW_EXTRAS[:-2])
    return "\n".join([
        "def rows_of(events, names, node=None):",
        "    out = []",
        "    for e in events:",
        "        try:",
        "            f = _first(e)",
        "        except KeyError:    # a record without a field every recording has (hand-written)",
        f"            f = tuple(map(e.get, {tuple(first)!r}))",
        f"        out.append(f + ({rest}{extras}e.get('netns_name') or names.get(f[{netns}]), e.get('count', 1)))",
        "    return out",
    ]) + "\n"


def cell(v: Any) -> str:
    """One CSV cell as pandas writes it (minimal quoting), formula-safe, one line."""
    if v is None:
        return ""
    if not isinstance(v, str):
        return str(v)
    v = csv_text(v)
    if "," in v or '"' in v or "\n" in v or "\r" in v:
        return '"' + v.replace('"', '""') + '"'
    return v


class Cells(dict):
    """value -> its CSV cell; a miss renders it (C-speed lookups on hits)."""

    def __missing__(self, v: Any) -> str:
        # large enough for every address of a busy node; cleared, not grown, past it
        if len(self) > 1 << 18:
            self.clear()
        c = self[v] = cell(v)
        return c


def write_table(columns: Iterable[str], rows: Iterable[Iterable[Any]], out: TextIO) -> None:
    """A small table (the summary) as CSV into `out`, cell by cell."""
    out.write("".join(_line(r) for r in [columns, *rows]))


def _line(r: Iterable[Any]) -> str:
    # a row of one empty cell is `""`, not a blank line (which readers skip)
    return (",".join(map(cell, r)) or '""') + "\n"


# ---- the row formatter, compiled from the catalog ------------------------------

def _var(name: str) -> str:
    return "f_" + name


def _cell_expr(c: catalog.Csv, var: str, tmp: str) -> tuple[list[str], str]:
    """(statements before the row's f-string, the cell's expression in it)."""
    if c.fmt == "text":
        return [], f"{{c[{var}]}}"
    if c.fmt == "int":
        cond = f"{var} is None" if not c.only_if else f"{var} is None or not {_var(c.only_if)}"
        return [], f"{{'' if {cond} else {var}}}"
    if c.fmt == "ms_as_s":
        # the same few idle times come back: their text is cached
        return [f"if type({var}) is int:",
                f"    {tmp} = idles.get({var})",
                f"    if {tmp} is None:",
                "        if len(idles) > 65536:",
                "            idles.clear()",
                f"        {tmp} = idles[{var}] = f'{{{var} / 1000.0}}'",
                "else:",
                f"    {tmp} = f'{{{var} / 1000.0}}' if isinstance({var}, (int, float)) else ''"], f"{{{tmp}}}"
    if c.fmt == "time":
        return [], "{p}.{frac:03d}Z"
    raise ValueError(f"CSV column {c.column}: no format {c.fmt!r}")


def _source() -> str:
    times = [f for c, f in SPECS if c.fmt == "time"]
    assert [f.name for f in times] == ["t"], "one time column, of `t`"   # type: ignore[union-attr]
    prep: list[str] = []
    row_parts: list[str] = []        # the row's f-string, piece by piece
    segs: list[str] = []             # verdict cells next to each other: one string per verdict
    seg: list[str] = []
    for i, (c, f) in enumerate(SPECS):
        if f is None and c.source == "verdict":
            seg.append(_cell_expr(c, "v_" + c.column, "")[1])
            continue
        if seg:
            segs.append(",".join(seg))
            row_parts.append(f"{{seg{len(segs) - 1}}}")
            seg = []
        if f is None:           # the report's values, the namespace's name, the resets the row stands for
            assert c.source in ("names", "row", "count"), c
            row_parts.append(f"{{c[x_{c.column}]}}" if c.source != "count" else "{x_count}")
            continue
        stmts, expr = _cell_expr(c, _var(f.name), f"x{i}")
        prep += stmts
        row_parts.append(expr)
    if seg:
        segs.append(",".join(seg))
        row_parts.append(f"{{seg{len(segs) - 1}}}")
    unpack = ", ".join([_var(n) for n in ROW_FIELDS] + ["x_" + c for c in ROW_EXTRAS])
    lines = [
        "def add(self, vc, rows):",
        "    if not rows:",
        "        return",
        "    c = self._cells",
        "    prefixes = self._sec",
        "    idles = self._idle",
        f"    {', '.join('v_' + n for n in VERDICT_CELLS)}, = vc",
        *[f"    seg{k} = f\"{s}\"" for k, s in enumerate(segs)],
        "    tally = self.tally",
        "    tally.incidents += 1",
        "    tally.rows += len(rows)",
        "    resets = 0",
        "    flows, per_s, nodes, pairs = tally.flows, tally.per_s, tally.nodes, tally.pairs",
        "    lo, hi = tally.ms_min, tally.ms_max",
        "    buf = self._buf",
        f"    for ({unpack},) in rows:",
        "        ms = round(f_t * 1000)",
        "        sec, frac = divmod(ms, 1000)",
        "        p = prefixes.get(sec) or self._prefix(sec)",
        "        resets += x_count",
        "        k = (f_src, f_sport, f_dst, v_cause)",
        "        flows[k] = flows.get(k, 0) + x_count",
        "        per_s[sec] = per_s.get(sec, 0) + x_count",
        "        k = (x_node, v_cause)",
        "        nodes[k] = nodes.get(k, 0) + x_count",
        "        if x_peer_node is not None and f_dir == 'recv':",
        "            k = (x_peer_node, x_node, v_cause)",
        "            pairs[k] = pairs.get(k, 0) + x_count",
        "        if lo is None or ms < lo:",
        "            lo = ms",
        "        if hi is None or ms > hi:",
        "            hi = ms",
        *["        " + s for s in prep],
        f"        buf.append(f\"{','.join(row_parts)}\\n\")",
        "    tally.ms_min, tally.ms_max = lo, hi",
        "    tally.n += resets",
        "    tally.causes[v_cause] = tally.causes.get(v_cause, 0) + resets",
        "    if len(buf) >= 8192:",
        "        self.flush()",
    ]
    return "\n".join(lines) + "\n"


SOURCE = _rows_source() + "\n\n" + _source()
_compiled: dict[str, Any] = {"_first": operator.itemgetter(*[n for n in ROW_FIELDS if n not in _later])}
exec(compile(SOURCE, "<csvout row formatter>", "exec"), _compiled)
#: rows_of(events, names, node): the rows of a verdict's reset records, each
#: its ROW_FIELDS (None where a record lacks one) and ROW_EXTRAS (`node`
#: where the record has none)
rows_of = _compiled["rows_of"]


class RowWriter:
    """Formats rows into an open text file and counts them (`tally`)."""

    def __init__(self, fh: TextIO):
        self.fh = fh
        self.tally = Tally()
        self._buf: list[str] = []
        self._cells = Cells()
        self._sec: dict[int, str] = {}
        self._idle: dict[int, str] = {}

    def _prefix(self, sec: int) -> str:
        if not TIME_MIN <= sec <= TIME_MAX:
            raise time_range_error(sec)
        if len(self._sec) > 65536:
            self._sec.clear()
        p = self._sec[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return p

    # add(vc, rows): vc the VERDICT_CELLS of one verdict, rows its resets'
    # ROW_FIELDS and namespace name each
    add = _compiled["add"]

    def flush(self) -> None:
        if self._buf:
            self.fh.write("".join(self._buf))
            self._buf.clear()

    def close(self) -> Tally:
        """Writes what is pending; returns the counts."""
        self.flush()
        self.fh.flush()
        return self.tally
