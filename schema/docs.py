"""The tables of docs/EVENTS.md, made from the field catalog.

    python -m rsttrace.schema.docs            # rewrites docs/EVENTS.md
    python -m rsttrace.schema.docs --check    # exit 1 if it is not up to date

The page's prose is written by hand; each table sits between
`<!-- generated: NAME -->` and `<!-- end generated -->` and is replaced
whole. A unit test fails when the committed page differs from what this
makes, so a field changed in the catalog changes its documentation in the
same commit.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

from . import catalog as cat

PAGE = Path(__file__).resolve().parents[1] / "docs" / "EVENTS.md"
_BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def type_text(t: Any) -> str:
    """A field's type as the page writes it: `int`, `str/null`, `"sent" / "recv"`."""
    origin = get_origin(t)
    if origin is Annotated:
        return type_text(get_args(t)[0])
    if origin in (Union, types.UnionType):
        args = get_args(t)
        parts = [type_text(a) for a in args if a is not type(None)]
        if len(parts) == 2 and set(parts) == {"int", "float"}:
            parts = ["number"]
        text = " / ".join(parts)
        if type(None) in args:
            text += " / null" if " / " in text else "/null"
        return text
    if origin is Literal:
        return " / ".join(f"`{a}`" if isinstance(a, int) else f'`"{a}"`' for a in get_args(t))
    if origin is dict or (isinstance(t, type) and issubclass(t, msgspec.Struct)):
        return "object"
    if origin is list:
        return "list"
    return {int: "int", float: "float", str: "str", bool: "bool"}.get(t, str(t))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _unit(f: cat.Field) -> str:
    return f.unit or ""


def _from(f: cat.Field) -> str:
    if f.decode is None or f.decode.op in ("kind", "null"):
        return ""
    how = f.decode.text()
    return f"`{f.c}`" + (f" ({how})" if how and f.decode.op != "int" else "")


def _when(f: cat.Field) -> str:
    if not f.when:
        return ""
    return f.when.replace("nonzero", f"{f.c} ≠ 0").join("``")


def event_table(kind: cat.Kind) -> str:
    rows = []
    for f in kind.fields:
        if f.name in ("kind", "t"):
            continue
        doc = f.doc + (f"; raw value in `{f.raw}`" if f.raw and f.raw != f.name else "")
        if f.later:
            doc += " (recordings made before it was added lack it)"
        rows.append([f"`{f.name}`", type_text(f.type), _unit(f), _from(f), _when(f),
                     f"`{f.csv.column}`" if f.csv else "", doc])
    return _table(["field", "type", "unit", "from `struct rst_event`", "null unless", "CSV", "meaning"], rows)


def plain_table(fields: tuple[cat.Field, ...]) -> str:
    return _table(["field", "type", "unit", "meaning"],
                  [[f"`{f.name}`", type_text(f.type), _unit(f), f.doc] for f in fields])


def common_table() -> str:
    kinds = ", ".join(f"`{k.name}`" for k in cat.RECORDS)
    t = cat.T
    return _table(["field", "type", "unit", "meaning"], [
        ["`kind`", "str", "", f"{kinds}; the header and the totals line: `header`, `totals`"],
        [f"`{t.name}`", type_text(t.type), t.unit, t.doc]])


def kinds_table() -> str:
    return _table(["`kind`", "enum rst_kind", "what"],
                  [[f"`{k.name}`", f"`{k.value.c}` = {int(k.value)}" if k.value is not None else "", k.doc]
                   for k in cat.RECORDS])


def struct_table() -> str:
    offsets, size = cat.layout()
    rows = [[f"`{m.name}`", m.ctype + (f"[{m.count}]" if m.count > 1 else ""), str(offsets[m.name]),
             str(m.size), m.doc] for m in cat.EVENT]
    return _table(["member", "C type", "offset", "size", "meaning"], rows) + f"\n{size} bytes in all.\n"


def agg_struct_table() -> str:
    rows = []
    for struct, members in (("rst_agg_key", cat.AGG_KEY), ("rst_agg_val", cat.AGG_VAL)):
        offsets, size = cat.layout(members)
        rows += [[f"`{struct}.{m.name}`", m.ctype + (f"[{m.count}]" if m.count > 1 else ""),
                  str(offsets[m.name]), str(m.size), m.doc] for m in members]
    return _table(["member", "C type", "offset", "size", "meaning"], rows)


def values_table() -> str:
    rows = []
    for where, values in (("`kind`", cat.RST_KIND), ("`dir`", cat.RST_DIR), ("`flags`", cat.FLAGS),
                          ("`flags2`", cat.FLAGS2), ("`rst_agg_key.aflags`", cat.AGGF)):
        rows += [[f"`{v.c}`", f"{int(v):#04x}" if "flags" in where else str(int(v)), where, v.doc]
                 for v in values]
    return _table(["name", "value", "in", "meaning"], rows)


def csv_table() -> str:
    rows = []
    for c, f in cat.csv_columns():
        if f is not None:
            src = f"`{f.name}`" + (f" where `{c.only_if}`" if c.only_if else "")
            doc = c.doc or f.doc
        else:
            src = {"verdict": "the verdict", "names": "the header's and `ctx` names", "row": "the report",
                   "count": "`reset_agg`'s `count`, else 1"}[c.source]
            doc = c.doc
        rows.append([f"`{c.column}`", src, doc])
    return _table(["column", "from", "meaning"], rows)


def tables() -> dict[str, str]:
    out = {"common": common_table(), "kinds": kinds_table(), "struct": struct_table(),
           "values": values_table(), "csv": csv_table(), "header": plain_table(cat.HEADER),
           "totals": plain_table(cat.TOTALS), "namespace": plain_table(cat.NAMESPACE),
           "reset_agg": plain_table(cat.RESET_AGG.fields[1:]), "agg_struct": agg_struct_table()}
    out.update({k.name: event_table(k) for k in cat.EVENTS})
    return out


def render(page: str) -> str:
    """The page with every generated block made anew; a block naming no
    table is an error."""
    made = tables()

    def block(m: re.Match) -> str:
        name = m.group(2)
        if name not in made:
            raise KeyError(f"docs: no generated table {name!r} (there are {', '.join(sorted(made))})")
        return m.group(1) + made[name] + m.group(4)
    return _BLOCK.sub(block, page)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rsttrace.schema.docs", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the page is not up to date")
    ap.add_argument("page", nargs="?", default=str(PAGE), help="default: %(default)s")
    args = ap.parse_args(argv)
    path = Path(args.page)
    old = path.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print(f"{path}: not up to date; run python -m rsttrace.schema.docs", file=sys.stderr)
            return 1
        return 0
    if new != old:
        path.write_text(new)
        print(f"{path}: updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
