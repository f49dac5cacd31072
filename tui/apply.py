"""The `f` screen's apply path: hands the selected reset's fixes to the
remedy engine (plan, validate, journal, apply, read back). The TUI decides
nothing here; it only reports what the engine did."""

from __future__ import annotations

import os
from typing import Any, Callable


def remedy_applier() -> tuple[Callable[[list[Any]], str] | None, str | None]:
    """(apply function, None) when fixes can be applied from here, else
    (None, why not)."""
    if os.geteuid() != 0:
        return None, "needs root"
    try:
        from rsttrace.remedy import apply as A
        from rsttrace.remedy import netns, planner, sources
        from rsttrace.remedy.paths import Paths
    except ImportError as e:
        return None, f"remedy engine unavailable: {e}"

    def apply_fixes(fixes: list[Any]) -> str:
        access = netns.SystemAccess()
        node = netns.self_target()
        g = sources.Gathered()
        sources.add_fixes(g, fixes, node)
        plan = planner.make_plan(g.proposals, access, node)
        if not plan.ok:
            return "plan refused: " + "; ".join(plan.errors)
        if not plan.changes:
            return "nothing to change: " + ("; ".join(plan.skipped) or "already applied")
        out = A.apply_plan(plan, access, Paths.from_env())
        done = ", ".join(f"{c.key}={c.new} in {c.target.label}" for c in out.changes)
        return f"applied {done} (undo: rsttrace fix --rollback)"

    return apply_fixes, None
