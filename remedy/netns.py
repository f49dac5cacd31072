"""Naming network namespaces and reaching the values inside them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Protocol

from rsttrace.remedy import nsexec
from rsttrace.remedy.model import RemedyError, Target

RUN_NETNS = "/run/netns"


class NetnsError(RemedyError):
    """A namespace that cannot be found or entered; the message says what to do."""


class AccessError(RemedyError):
    """A value could not be read or written in a namespace."""


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def self_target() -> Target:
    ino = _inode("/proc/self/ns/net")
    try:
        label = "init" if _inode("/proc/1/ns/net") == ino else f"pid:{os.getpid()}"
    except OSError:
        label = "self"
    return Target("self", "", ino, "/proc/self/ns/net", label)


def _wrap(kind: str, ref: str, path: str, label: str) -> Target:
    ino = _inode(path)
    if ino == _inode("/proc/self/ns/net"):
        return self_target()
    return Target(kind, ref, ino, path, label)


def resolve(spec: str) -> Target:
    """`--netns NAME|PID`: a name under /run/netns, or a process id."""
    spec = spec.strip()
    if spec in ("", "init", "host", "root"):
        return self_target()
    if spec.isdigit() and os.path.exists(f"/proc/{spec}/ns/net"):
        return _wrap("pid", spec, f"/proc/{spec}/ns/net", f"pid:{spec}")
    if "/" not in spec and os.path.exists(os.path.join(RUN_NETNS, spec)):
        return _wrap("name", spec, os.path.join(RUN_NETNS, spec), spec)
    what = "no process" if spec.isdigit() else f"no namespace {RUN_NETNS}/{spec}"
    raise NetnsError(f"--netns {spec}: {what}; give a name from `ip netns list` or a PID")


def by_inode(inode: int, name_hint: str | None = None) -> Target | None:
    """The namespace with this inode: ours, a named one, or one a process is in."""
    if inode == _inode("/proc/self/ns/net"):
        return self_target()
    names = [name_hint] if name_hint and "/" not in name_hint else []
    try:
        names += sorted(os.listdir(RUN_NETNS))
    except FileNotFoundError:
        pass
    for name in names:
        p = os.path.join(RUN_NETNS, name)
        try:
            if _inode(p) == inode:
                return Target("name", name, inode, p, name)
        except OSError:
            continue
    for pid in sorted((d for d in os.listdir("/proc") if d.isdigit()), key=int):
        p = f"/proc/{pid}/ns/net"
        try:
            if _inode(p) == inode:
                return Target("pid", pid, inode, p, f"pid:{pid}")
        except OSError:
            continue
    return None


def still_same(t: Target) -> Target:
    """Re-find a journaled target, refusing one whose path now leads elsewhere."""
    if t.kind == "self":
        cur = self_target()
        if cur.inode != t.inode:
            raise NetnsError(f"rsttrace now runs in another namespace than {t.label}; "
                             "run the rollback from the namespace it was applied in")
        return cur
    try:
        ino = _inode(t.path)
    except OSError:
        ino = -1
    if ino != t.inode:
        found = by_inode(t.inode)
        if found is None:
            raise NetnsError(f"namespace {t.label} (inode {t.inode}) no longer exists")
        return found
    return t


class Access(Protocol):
    def read(self, target: Target, keys: list[str]) -> dict[str, int | None]: ...
    def write(self, target: Target, key: str, value: int) -> int | None: ...
    def ipvs_available(self, target: Target) -> bool: ...
    def mem_total(self) -> int: ...
    def buckets_via(self) -> str: ...


class SystemAccess:
    """The real node: our own namespace directly, others through nsenter."""

    def __init__(self) -> None:
        self._ipvs: dict[int, bool] = {}

    def _call(self, target: Target, req: dict[str, Any]) -> dict[str, Any]:
        if target.local:
            return nsexec.handle(req)
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
        if target.inode not in self._ipvs:
            self._ipvs[target.inode] = bool(
                self._call(target, {"op": "ipvs_available"}).get("available"))
        return self._ipvs[target.inode]

    def mem_total(self) -> int:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
        raise AccessError("no MemTotal in /proc/meminfo")

    def buckets_via(self) -> str:
        return nsexec.buckets_via()
