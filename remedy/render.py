"""The plan and its outcome as text that fits 80 columns.

Namespace names, keys, reasons and handed-over snippets come from the host
(and from recordings): each goes through the one sanitiser before it is
laid out, so a name cannot carry a terminal sequence or a line break into
the plan, and widths are counted on what is shown.
"""

from __future__ import annotations

import textwrap

from rsttrace.analysis.safe import printable
from rsttrace.remedy.model import Plan

WIDTH = 80


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(printable(text), WIDTH, initial_indent=indent,
                         subsequent_indent=indent) or [indent]


def plan_text(plan: Plan, source: str = "") -> str:
    out: list[str] = []
    n = len(plan.changes)
    out.append(f"Fix plan: {n} change{'s' if n != 1 else ''}" + (f" ({printable(source)})" if source else ""))
    if plan.changes:
        out.append("")
        out.append(f"  {'WHERE':<15} {'SCOPE':<6} {'KEY':<36} {'NOW':>8} {'NEW':>8}")
        for c in plan.changes:
            now = "-" if c.old is None else printable(c.old)
            new, key = printable(c.new), printable(c.key)
            label = printable(c.target.label)
            if len(label) > 15:  # whole on its own line: a cut name names nothing
                out.append(f"  {label}")
                label = ""
            where = f"{label:<15} {c.scope:<6}"
            if len(key) <= 36:
                out.append(f"  {where} {key:<36} {now:>8} {new:>8}")
            else:  # full key on its own line: it is what users copy
                out.append(f"  {where} {key}")
                out.append(f"  {'':<15} {'':<6} {'':<36} {now:>8} {new:>8}")
            if c.via == "hashsize":
                out.append(" " * 25 + "via the nf_conntrack hashsize module parameter")
            for r in c.reasons:
                out += _wrap("why: " + r, " " * 25)
    if plan.handovers:
        out.append("")
        out.append("Hand over (rsttrace cannot set these itself):")
        for h in plan.handovers:
            out += _wrap(f"[{h.scope}] {h.title}" + (f": {h.reason}" if h.reason else ""), "  ")
            out += ["      " + printable(line) for line in h.text.splitlines()]
    if plan.skipped:
        out.append("")
        out.append("Not planned:")
        for s in plan.skipped:
            out += _wrap("- " + s, "  ")
    if plan.warnings:
        out.append("")
        for w in plan.warnings:
            out += _wrap("warning: " + w, "")
    if plan.errors:
        out.append("")
        out.append("Refused, nothing was changed:")
        for e in plan.errors:
            out += _wrap("- " + e, "  ")
    return "\n".join(out)
