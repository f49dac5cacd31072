"""Atomic file writes and exact snapshots, so persisted files can be undone."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsttrace.outfile import OutFile


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """A sibling temp file, fsynced, renamed over `path`, the directory
    fsynced (rsttrace.outfile.OutFile): a crash leaves either the old file
    or the new one, never half of one. A link at `path` is replaced, not
    followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with OutFile(path, mode=mode, sync=True, over_links=True) as out:
        out.write(text)


@dataclass
class FileState:
    """A path as it was: absent, a regular file's text, or a symlink's target."""
    path: str
    content: str | None = None
    link: str | None = None

    @classmethod
    def capture(cls, path: Path) -> "FileState":
        if path.is_symlink():
            return cls(str(path), link=os.readlink(path))
        if path.exists():
            return cls(str(path), content=path.read_text(encoding="utf-8"))
        return cls(str(path))

    def restore(self) -> None:
        p = Path(self.path)
        if self.link is not None:
            if p.is_symlink() or p.exists():
                p.unlink()
            p.parent.mkdir(parents=True, exist_ok=True)
            p.symlink_to(self.link)
        elif self.content is not None:
            atomic_write(p, self.content)
        elif p.is_symlink() or p.exists():
            p.unlink()

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "content": self.content, "link": self.link}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FileState":
        return cls(d["path"], d.get("content"), d.get("link"))


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=1) + "\n", mode=0o600)
