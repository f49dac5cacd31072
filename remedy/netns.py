"""Naming network namespaces and reaching the values inside them.

A namespace is identified by its inode together with its cookie, which the
kernel never reuses while the host runs (tracer/netnsid.py); every read
and write sends the planned cookie along, and the code that runs inside
the namespace refuses when it finds another one there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

from rsttrace.remedy import nsexec
from rsttrace.remedy.model import RemedyError, Target
from rsttrace.tracer import netnsid
from rsttrace.tracer.fsnames import text

RUN_NETNS = "/run/netns"


class NetnsError(RemedyError):
    """A namespace that cannot be found or entered; the message says what to do."""


class AccessError(RemedyError):
    """A value could not be read or written in a namespace."""


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def self_target() -> Target:
    ino, cookie = netnsid.identify("/proc/self/ns/net")
    try:
        label = "init" if _inode("/proc/1/ns/net") == ino else f"pid:{os.getpid()}"
    except OSError:
        label = "self"
    return Target("self", "", ino, "/proc/self/ns/net", label, cookie)


def _wrap(kind: str, ref: str, path: str, label: str) -> Target:
    ino, cookie = netnsid.identify(path)
    me = self_target()
    if ino == me.inode:
        return me
    return Target(kind, ref, ino, path, label, cookie)


def _run_netns(name: str) -> str | None:
    """/run/netns/NAME when NAME can only be a name there (no "/", not "."
    or ".."), else None."""
    if not name or "/" in name or name in (".", ".."):
        return None
    return os.path.join(RUN_NETNS, name)


def resolve(spec: str) -> Target:
    """`--netns NAME|PID`: a name under /run/netns, or a process id."""
    spec = spec.strip()
    if spec in ("", "init", "host", "root"):
        return self_target()
    try:
        if spec.isdigit() and os.path.exists(f"/proc/{spec}/ns/net"):
            return _wrap("pid", spec, f"/proc/{spec}/ns/net", f"pid:{spec}")
        path = _run_netns(spec)
        if path and os.path.exists(path):
            return _wrap("name", spec, path, text(spec))
    except OSError as e:
        raise NetnsError(f"--netns {text(spec)}: cannot open its namespace: {e.strerror}") from None
    what = "no process" if spec.isdigit() else f"no namespace {RUN_NETNS}/{text(spec)}"
    raise NetnsError(f"--netns {text(spec)}: {what}; give a name from `ip netns list` or a PID")


def named(name: str) -> Target:
    """The namespace /run/netns/NAME and nothing else: persisted names are
    never read as a process id or as the node (the node's file is the caller's)."""
    path = _run_netns(name)
    try:
        if path is None or not os.path.exists(path):
            raise NetnsError(f"no namespace {RUN_NETNS}/{text(name)}")
        return _wrap("name", name, path, text(name))
    except OSError as e:
        raise NetnsError(f"namespace {text(name)}: cannot open {path}: {e.strerror}") from None


@dataclass(frozen=True)
class Located:
    """Where a namespace seen earlier (in a recording, a journal) is now."""
    target: Target | None
    why: str = ""        # why there is no target
    weak: bool = False   # matched by inode and name: there was no cookie to compare


def _candidates(inode: int, name: str | None) -> Iterator[tuple[str, str, str, str]]:
    """(kind, ref, path, label) of paths that lead to `inode` now: the
    recorded name first, then other names, the recorded process, others."""
    try:
        entries = sorted(os.listdir(RUN_NETNS))
    except OSError:
        entries = []
    for first in (True, False):
        for raw in entries:
            if (text(raw) == name) == first:
                yield "name", raw, os.path.join(RUN_NETNS, raw), text(raw)
    pid = name[4:] if name and name.startswith("pid:") and name[4:].isdigit() else None
    pids = [pid] if pid else []
    pids += sorted((d for d in os.listdir("/proc") if d.isdigit() and d != pid), key=int)
    for p in pids:
        yield "pid", p, f"/proc/{p}/ns/net", f"pid:{p}"


def locate(inode: int, name: str | None, cookie: int | None) -> Located:
    """The live namespace that is the one seen as (inode, name, cookie).

    Inodes are reused, so a path leading to `inode` proves nothing alone:
    with a cookie, the namespace found must have that cookie; without one
    (a kernel before 5.14, an older recording) it must also have that name
    (`weak`). One inode is one namespace at any moment, so the first path
    found decides; its name is what the plan calls it."""
    shown = f"{name or 'netns'} (inode {inode})"
    me = self_target()
    found: Target | None = None
    if me.inode == inode:
        found = me
    else:
        for kind, ref, path, label in _candidates(inode, name):
            try:
                if _inode(path) != inode:
                    continue
                ino, now = netnsid.identify(path)
            except OSError:
                continue   # gone meanwhile (a process exited)
            if ino == inode:
                found = Target(kind, ref, ino, path, label, now)
                break
    if found is None:
        return Located(None, f"namespace {shown} no longer exists")
    if cookie is not None and found.cookie is not None:
        if found.cookie != cookie:
            return Located(None, f"namespace {shown} no longer exists: its inode now belongs "
                                 f"to another namespace ({found.label})")
        return Located(found)
    if name is not None and found.label == name:
        return Located(found, weak=True)
    return Located(None, f"namespace {shown} is gone or renamed: its inode is now "
                         f"{found.label}'s, and with no cookie to compare, inode and name must "
                         "both match")


def still_same(t: Target) -> Target:
    """Re-find a planned or journaled target, refusing one whose path now
    leads to another namespace (found elsewhere when it has moved)."""
    if t.kind == "self":
        cur = self_target()
        if cur.inode != t.inode or (None not in (t.cookie, cur.cookie) and cur.cookie != t.cookie):
            raise NetnsError(f"rsttrace now runs in another namespace than {t.label}; "
                             "run the rollback from the namespace it was applied in")
        return cur
    try:
        ino, now = netnsid.identify(t.path)
    except OSError:
        ino, now = -1, None
    if ino == t.inode and (t.cookie is None or now == t.cookie):
        return t
    found = locate(t.inode, t.label, t.cookie)
    if found.target is None:
        raise NetnsError(found.why)
    return found.target


class Access(Protocol):
    def read(self, target: Target, keys: list[str]) -> dict[str, int | None]: ...
    def write(self, target: Target, key: str, value: int) -> int | None: ...
    def ipvs_available(self, target: Target) -> bool: ...
    def mem_total(self) -> int: ...
    def buckets_via(self) -> str: ...


class SystemAccess:
    """The real node: our own namespace directly, others through nsenter."""

    def __init__(self) -> None:
        self._ipvs: dict[tuple[int, int | None], bool] = {}

    def _call(self, target: Target, req: dict[str, Any]) -> dict[str, Any]:
        if target.cookie is not None:
            req = {**req, "cookie": target.cookie}
        if target.local:
            reply = nsexec.handle(req)
        else:
            reply = self._enter(target, req)
        if reply.get("moved"):
            raise NetnsError(f"namespace {target.label}: {reply.get('error')}")
        return reply

    def _enter(self, target: Target, req: dict[str, Any]) -> dict[str, Any]:
        cmd = ["nsenter", f"--net={target.path}", "--", sys.executable, "-m",
               "rsttrace.remedy.nsexec", json.dumps(req)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AccessError(f"cannot enter namespace {target.label}: {e}") from e
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["no output"])[-1]
            raise AccessError(f"cannot enter namespace {target.label}: {last}")
        try:
            return json.loads(p.stdout)
        except ValueError as e:
            raise AccessError(f"namespace {target.label}: unreadable reply from "
                              f"rsttrace.remedy.nsexec ({e})") from e

    def read(self, target: Target, keys: list[str]) -> dict[str, int | None]:
        return self._call(target, {"op": "read", "keys": keys})["values"]

    def write(self, target: Target, key: str, value: int) -> int | None:
        reply = self._call(target, {"op": "write", "key": key, "value": value})
        if "error" in reply:
            raise AccessError(f"{target.label}: {reply['error']}")
        return reply.get("readback")

    def ipvs_available(self, target: Target) -> bool:
        key = (target.inode, target.cookie)
        if key not in self._ipvs:
            self._ipvs[key] = bool(self._call(target, {"op": "ipvs_available"}).get("available"))
        return self._ipvs[key]

    def mem_total(self) -> int:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
        raise AccessError("no MemTotal in /proc/meminfo")

    def buckets_via(self) -> str:
        return nsexec.buckets_via()
