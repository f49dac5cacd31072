"""Applying a plan as a transaction, and undoing it.

Order of work: read the values again, write the journal (previous values and
previous file contents) to disk, then change one value at a time and read it
back from the kernel; then write the persisted files. Any failure undoes
everything already done, in reverse, and the error says what failed and what
was restored. The journal is a stack: `rollback_last` undoes the newest entry.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from rsttrace.remedy import netns, persist
from rsttrace.remedy.files import FileState, write_json
from rsttrace.remedy.model import Change, Plan, RemedyError
from rsttrace.remedy.netns import Access, AccessError, NetnsError
from rsttrace.remedy.paths import Paths

JOURNAL_VERSION = 1


class ApplyError(RemedyError):
    """The plan was not applied; the message says what failed and what was undone."""


@dataclass
class Outcome:
    changes: list[Change] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class VerifyError(Exception):
    pass


# --- journal ---------------------------------------------------------------

def load_journal(paths: Paths) -> dict[str, Any]:
    try:
        data = json.loads(paths.journal.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": JOURNAL_VERSION, "entries": []}
    except (OSError, ValueError) as e:
        raise ApplyError(f"cannot read the journal {paths.journal}: {e}; "
                         "fix or move it aside before applying or rolling back") from e
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ApplyError(f"{paths.journal} is not an rsttrace journal; move it aside")
    return data


def _save_journal(paths: Paths, data: dict[str, Any]) -> None:
    write_json(paths.journal, data)


# --- one value -------------------------------------------------------------

def _set(access: Access, c: Change, value: int) -> None:
    target = netns.still_same(c.target)
    readback = access.write(target, c.key, value)
    if readback != value:
        raise VerifyError(f"{c.key} in {c.target.label}: wrote {value}, "
                          f"the kernel reads back {readback}")


def _undo(access: Access, done: list[Change]) -> tuple[list[str], list[str]]:
    restored, failed = [], []
    for c in reversed(done):
        if c.old is None:
            continue
        try:
            _set(access, c, c.old)
            restored.append(f"{c.key}={c.old} in {c.target.label}")
        except (AccessError, NetnsError, VerifyError) as e:
            failed.append(str(e))
    return restored, failed


def _restore_files(states: list[FileState]) -> list[str]:
    failed = []
    for st in reversed(states):
        try:
            st.restore()
        except OSError as e:
            failed.append(f"{st.path}: {e}")
    return failed


# --- the transaction ---------------------------------------------------------

def apply_plan(plan: Plan, access: Access, paths: Paths, *, persist_files: bool = True) -> Outcome:
    if not plan.ok:
        raise ApplyError("the plan was refused: " + "; ".join(plan.errors))
    if not plan.changes:
        return Outcome()
    # Previous values read now, not at planning time, so the journal holds
    # exactly what the kernel had just before the first write.
    by_target: dict[int, list[Change]] = {}
    for c in plan.changes:
        by_target.setdefault(c.target.inode, []).append(c)
    try:
        for cs in by_target.values():
            now = access.read(netns.still_same(cs[0].target), [c.key for c in cs])
            for c in cs:
                c.old = now.get(c.key)
        files, notes = persist.render(plan, paths) if persist_files else ({}, [])
        states = persist.snapshot(files, paths)
        journal = load_journal(paths)
        entry = {"id": time.strftime("%Y%m%dT%H%M%S"), "t": time.time(), "state": "applying",
                 "changes": [c.to_json() for c in plan.changes],
                 "files": [s.to_json() for s in states]}
        journal["entries"].append(entry)
        _save_journal(paths, journal)
    except (AccessError, NetnsError, OSError) as e:
        # Nothing has been written yet: no journal entry, no value, no file.
        raise ApplyError(f"{e}; nothing was changed") from e

    done: list[Change] = []
    try:
        for c in plan.changes:
            try:
                _set(access, c, c.new)
            except VerifyError:
                # The kernel took the write but holds another value: put it back too.
                done.append(c)
                raise
            done.append(c)
        persist.write(files, paths)
    except (AccessError, NetnsError, VerifyError, OSError) as e:
        restored, failed = _undo(access, done)
        failed += _restore_files(states)
        what = f"{e}; " + (f"restored {', '.join(restored)}" if restored else "nothing had been changed")
        if failed:
            entry["state"] = "failed"
            _save_journal(paths, journal)
            raise ApplyError(f"{what}; could NOT restore: {'; '.join(failed)} "
                             "(run `rsttrace fix --rollback` to retry)") from e
        journal["entries"].pop()
        _save_journal(paths, journal)
        raise ApplyError(what) from e
    entry["state"] = "applied"
    _save_journal(paths, journal)
    return Outcome(list(plan.changes), [str(p) for p in persist.touched(files, paths)], notes)


def rollback_last(access: Access, paths: Paths) -> Outcome:
    journal = load_journal(paths)
    if not journal["entries"]:
        raise ApplyError(f"nothing to roll back: the journal {paths.journal} is empty")
    entry = journal["entries"][-1]
    changes = [Change.from_json(d) for d in entry["changes"]]
    states = [FileState.from_json(d) for d in entry["files"]]
    restored, failed = _undo(access, changes)
    failed += _restore_files(states)
    if failed:
        entry["state"] = "failed"
        _save_journal(paths, journal)
        raise ApplyError(f"rollback incomplete: {'; '.join(failed)}; restored "
                         f"{', '.join(restored) or 'nothing'}")
    journal["entries"].pop()
    _save_journal(paths, journal)
    return Outcome(changes, [s.path for s in states])


def reapply(access: Access, paths: Paths) -> tuple[list[str], list[str]]:
    """Boot time: set the persisted per-namespace and IPVS values again."""
    done, problems = [], []
    for name, values in persist.read_netns_confs(paths).items():
        try:
            target = netns.resolve(name)
        except NetnsError as e:
            problems.append(str(e))
            continue
        for key, value in values.items():
            c = Change(target, key, None, value)
            try:
                _set(access, c, value)
                done.append(f"{key}={value} in {target.label}")
            except (AccessError, NetnsError, VerifyError) as e:
                problems.append(str(e))
    return done, problems
