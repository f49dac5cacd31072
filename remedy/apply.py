"""Applying a plan as a transaction, and undoing it.

Order of work: read the values again, write the journal (previous values and
previous file contents) to disk, then change one value at a time and read it
back from the kernel; then write the persisted files. Any failure undoes
everything already done, in reverse, and the error says what failed and what
was restored. The journal is a stack: `rollback_last` undoes the newest entry.
Each of these holds the fix lock (remedy/lock.py) and checks the whole
journal's shape before using any of it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from rsttrace.remedy import keys as K
from rsttrace.remedy import netns, persist
from rsttrace.remedy.files import FileState, read_regular, write_json
from rsttrace.remedy.lock import fix_lock
from rsttrace.remedy.model import Change, Plan, RemedyError
from rsttrace.remedy.netns import Access, AccessError, NetnsError
from rsttrace.remedy.paths import Paths
from rsttrace.tracer.fsnames import text

JOURNAL_VERSION = 1
ENTRY_STATES = ("applying", "applied", "failed")
TARGET_KINDS = ("self", "name", "pid")
SCOPES = ("global", "netns")
VIAS = ("sysctl", "hashsize", "ipvs")


class ApplyError(RemedyError):
    """The plan was not applied; the message says what failed and what was undone."""


class JournalError(ApplyError):
    """The journal cannot be used: nothing was read from it or changed."""


@dataclass
class Outcome:
    changes: list[Change] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class VerifyError(Exception):
    pass


# --- journal ---------------------------------------------------------------

def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _target_problem(t: Any) -> str | None:
    if not isinstance(t, dict):
        return "its target is not an object"
    if t.get("kind") not in TARGET_KINDS:
        return f"target kind {t.get('kind')!r} is not one of {', '.join(TARGET_KINDS)}"
    for k in ("ref", "path", "label"):
        if not isinstance(t.get(k), str):
            return f"target {k} is not a string"
    if not _int(t.get("inode")) or t["inode"] <= 0:
        return "target inode is not a positive integer"
    if t.get("cookie") is not None and not _int(t["cookie"]):
        return "target cookie is not an integer"
    return None


def _change_problem(c: Any) -> str | None:
    if not isinstance(c, dict):
        return "not an object"
    why = _target_problem(c.get("target"))
    if why:
        return why
    if not isinstance(c.get("key"), str):
        return "its key is not a string"
    try:
        K.spec_for(c["key"])
    except K.UnknownKey:
        return f"key {c['key']!r} is not one rsttrace sets"
    if not _int(c.get("new")) or (c.get("old") is not None and not _int(c["old"])):
        return "its old or new value is not an integer"
    if not isinstance(c.get("reasons", []), list) or \
            not all(isinstance(r, str) for r in c.get("reasons", [])):
        return "its reasons are not a list of strings"
    if c.get("scope", "netns") not in SCOPES or c.get("via", "sysctl") not in VIAS:
        return f"scope {c.get('scope')!r} or via {c.get('via')!r} is unknown"
    return None


def _file_problem(f: Any, paths: Paths) -> str | None:
    if not isinstance(f, dict):
        return "not an object"
    if not isinstance(f.get("path"), str):
        return "its path is not a string"
    if not paths.managed(f["path"]):
        # rollback rewrites these files as root: only rsttrace's own
        return f"{f['path']!r} is not a file rsttrace writes"
    for k in ("content", "link"):
        if f.get(k) is not None and not isinstance(f[k], str):
            return f"its {k} is not a string"
    if f.get("content") is not None and f.get("link") is not None:
        return "it has both content and a link"
    if f.get("mode") is not None and not (_int(f["mode"]) and 0 <= f["mode"] <= 0o7777):
        return "its mode is not a file mode"
    for k in ("uid", "gid"):
        if f.get(k) is not None and not (_int(f[k]) and f[k] >= 0):
            return f"its {k} is not a user or group id"
    return None


def journal_problem(data: Any, paths: Paths) -> str | None:
    """What is wrong with a journal's shape, or None: every entry, every
    change, every file state is checked before any is used."""
    if not isinstance(data, dict):
        return "it is not a JSON object"
    if data.get("version") != JOURNAL_VERSION:
        return f"version {data.get('version')!r}, this rsttrace reads version {JOURNAL_VERSION}"
    entries = data.get("entries")
    if not isinstance(entries, list):
        return "'entries' is not a list"
    for i, e in enumerate(entries, 1):
        if not isinstance(e, dict):
            return f"entry {i} is not an object"
        if not isinstance(e.get("id"), str) or e.get("state") not in ENTRY_STATES or \
                not isinstance(e.get("t"), (int, float)) or isinstance(e.get("t"), bool):
            return f"entry {i} lacks an id, a time or a known state"
        for what, check in (("changes", _change_problem),
                            ("files", lambda f: _file_problem(f, paths))):
            items = e.get(what)
            if not isinstance(items, list):
                return f"entry {i}: '{what}' is not a list"
            for j, item in enumerate(items, 1):
                why = check(item)
                if why:
                    return f"entry {i}, {what[:-1]} {j}: {why}"
    return None


def load_journal(paths: Paths) -> dict[str, Any]:
    try:
        raw = read_regular(paths.journal)
    except FileNotFoundError:
        return {"version": JOURNAL_VERSION, "entries": []}
    except OSError as e:
        raise JournalError(f"cannot read the journal {paths.journal}: {e.strerror or e}; "
                           "nothing was changed") from e
    try:
        data = json.loads(raw)
    except ValueError as e:
        why = f"it is not JSON ({e})"
    else:
        why = journal_problem(data, paths)
    if why:
        raise JournalError(f"the journal {paths.journal} is damaged: {why}; nothing was "
                           "changed: move it aside to go on (what it records can then no "
                           "longer be rolled back)")
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
    with fix_lock(paths):
        return _apply(plan, access, paths, persist_files)


def _apply(plan: Plan, access: Access, paths: Paths, persist_files: bool) -> Outcome:
    journal = load_journal(paths)
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
    with fix_lock(paths):
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
    """Boot time: set the persisted per-namespace and IPVS values again.
    netns.d/init.conf is the node's own namespace; any other NAME.conf is
    /run/netns/NAME, never a process id or the node, whatever NAME is."""
    done: list[str] = []
    with fix_lock(paths):
        confs, problems = persist.read_netns_confs(paths)
        for name, values in confs.items():
            conf = paths.netns_dir / f"{name}.conf"
            try:
                target = netns.self_target() if name == persist.NODE_FILE else netns.named(name)
            except NetnsError as e:
                problems.append(f"{e} (persisted in {text(str(conf))}); create it, or remove "
                                "that file")
                continue
            for key, value in values.items():
                c = Change(target, key, None, value)
                try:
                    _set(access, c, value)
                    done.append(f"{key}={value} in {target.label}")
                except (AccessError, NetnsError, VerifyError) as e:
                    problems.append(str(e))
    return done, problems
