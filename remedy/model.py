"""The data a plan is made of: where, what, from which value to which, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class RemedyError(Exception):
    """Base of every error the remedy engine raises to its callers (the CLI,
    the TUI): catching it is enough; the message says what to do."""


@dataclass(frozen=True)
class Target:
    """A network namespace rsttrace can enter.

    kind "self": the namespace rsttrace runs in (written directly);
    "name": a namespace bound under /run/netns; "pid": the namespace of a
    process (a pod's sandbox, a container). The inode is reused once a
    namespace is gone; the cookie (tracer/netnsid.py) is not, so a target
    with a cookie is acted on only where that cookie is read again (every
    read and write checks it from inside the namespace). None: a kernel
    before 5.14, where inode and name are all there is.
    """
    kind: str
    ref: str        # name (the real bytes, as Python reads file names), pid as text, or "" for self
    inode: int
    path: str
    label: str      # what users read: "init", the name as text, or "pid:N"
    cookie: int | None = None

    @property
    def local(self) -> bool:
        return self.kind == "self"

    def same_ns(self, other: "Target") -> bool:
        """Whether both name one namespace (by cookie where both have one)."""
        if self.cookie is not None and other.cookie is not None:
            return self.cookie == other.cookie
        return self.inode == other.inode

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref": self.ref, "inode": self.inode,
                "path": self.path, "label": self.label, "cookie": self.cookie}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Target":
        return cls(d["kind"], d["ref"], int(d["inode"]), d["path"], d["label"], d.get("cookie"))


@dataclass
class Proposal:
    """One fix asked for: by the analysis, a config finding, or `--set`."""
    target: Target
    key: str
    value: int
    reason: str
    cause: str = ""
    manual: bool = False   # `--set`: exactly this value, even if weaker than now


@dataclass
class Change:
    target: Target
    key: str
    old: int | None
    new: int
    reasons: list[str] = field(default_factory=list)
    scope: str = "netns"      # "global" or "netns"
    via: str = "sysctl"       # "sysctl", "hashsize" (module parameter) or "ipvs"

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target.to_json(), "key": self.key, "old": self.old,
                "new": self.new, "reasons": self.reasons, "scope": self.scope, "via": self.via}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Change":
        return cls(Target.from_json(d["target"]), d["key"], d["old"], int(d["new"]),
                   list(d.get("reasons", [])), d.get("scope", "netns"), d.get("via", "sysctl"))


@dataclass
class Handover:
    """Something rsttrace cannot change itself: text to paste elsewhere."""
    scope: str      # "pod", "kube-proxy", "pool"
    title: str
    text: str
    reason: str = ""


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    handovers: list[Handover] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # asked for but not planned, and why
    errors: list[str] = field(default_factory=list)    # refusals: nothing may be applied
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors
