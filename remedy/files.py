"""Atomic file writes and exact snapshots, so persisted files can be undone."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsttrace.outfile import OutFile


def atomic_write(path: Path, text: str, mode: int | None = None,
                 owner: tuple[int, int] | None = None) -> None:
    """A sibling temp file, fsynced, renamed over `path`, the directory
    fsynced (rsttrace.outfile.OutFile): a crash leaves either the old file
    or the new one, never half of one. A link at `path` is replaced, not
    followed. `mode` and `owner` default to the existing file's (0o644 and
    ours for a new one), so replacing a file keeps who may read it. Text
    that came from a file that is not UTF-8 keeps its bytes
    (surrogateescape)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None or owner is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            mode = stat.S_IMODE(st.st_mode) if mode is None else mode
            owner = (st.st_uid, st.st_gid) if owner is None else owner
    with OutFile(path, mode=0o644 if mode is None else mode, sync=True, over_links=True,
                 owner=owner, errors="surrogateescape") as out:
        out.write(text)


def read_regular(path: Path) -> str:
    """A regular file's text, never through a link; bytes that are not
    UTF-8 kept (surrogateescape). OSError for anything else: a FIFO would
    block the read, a device is not a settings file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file; move it aside")
        return f.read().decode("utf-8", "surrogateescape")


@dataclass
class FileState:
    """A path as it was: absent, a regular file's text (with its mode and
    owner), or a symlink's target."""
    path: str
    content: str | None = None
    link: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    @classmethod
    def capture(cls, path: Path) -> "FileState":
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return cls(str(path))
        if stat.S_ISLNK(st.st_mode):
            return cls(str(path), link=os.readlink(path))
        return cls(str(path), content=read_regular(path), mode=stat.S_IMODE(st.st_mode),
                   uid=st.st_uid, gid=st.st_gid)

    def restore(self) -> None:
        p = Path(self.path)
        if self.link is not None:
            if p.is_symlink() or p.exists():
                p.unlink()
            p.parent.mkdir(parents=True, exist_ok=True)
            p.symlink_to(self.link)
        elif self.content is not None:
            owner = (self.uid, self.gid) if self.uid is not None and self.gid is not None else None
            atomic_write(p, self.content, 0o644 if self.mode is None else self.mode, owner)
        elif p.is_symlink() or p.exists():
            p.unlink()

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "content": self.content, "link": self.link,
                "mode": self.mode, "uid": self.uid, "gid": self.gid}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FileState":
        return cls(d["path"], d.get("content"), d.get("link"), d.get("mode"),
                   d.get("uid"), d.get("gid"))


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=1) + "\n", mode=0o600,
                 owner=(os.getuid(), os.getgid()))
