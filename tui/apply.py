"""The `f` screen's apply path: hands the selected reset's fixes to the
remedy engine (plan, validate, journal, apply, read back). The TUI decides
nothing here; it only reports what the engine did."""

from __future__ import annotations

import os
from typing import Any, Callable

from rsttrace.analysis.fixes import Fix


def remedy_applier() -> tuple[Callable[[list[Fix], dict[str, Any], list[dict[str, Any]]], str] | None,
                              str | None]:
    """(apply function, None) when fixes can be applied from here, else
    (None, why not). The function takes the fixes, the source's header and
    each namespace and cookie the screen's context snapshots showed (ctx
    entries): with them a fix is applied only in the namespace it was
    computed for, as `rsttrace fix --from` does, never in a later one that
    took its inode."""
    if os.geteuid() != 0:
        return None, "needs root"
    try:
        from rsttrace.remedy import apply as A
        from rsttrace.remedy import netns, planner, sources
        from rsttrace.remedy.paths import Paths
    except ImportError as e:
        return None, f"remedy engine unavailable: {e}"

    def apply_fixes(fixes: list[Fix], header: dict[str, Any], namespaces: list[dict[str, Any]]) -> str:
        access = netns.SystemAccess()
        node = netns.self_target()
        seen = sources.SeenNetns()
        seen.add_header(header)
        seen.add_ctx({"namespaces": namespaces})
        g = sources.Gathered()
        sources.add_fixes(g, fixes, node, seen)
        plan = planner.make_plan(g.proposals, access, node)
        if not plan.ok:
            return "plan refused: " + "; ".join(plan.errors + g.notes)
        if not plan.changes:
            return "nothing to change: " + ("; ".join(plan.skipped + g.notes) or "already applied")
        out = A.apply_plan(plan, access, Paths.from_env())
        done = ", ".join(f"{c.key}={c.new} in {c.target.label}" for c in out.changes)
        return f"applied {done} (undo: rsttrace fix --rollback)"

    return apply_fixes, None
