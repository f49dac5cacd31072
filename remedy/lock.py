"""One `rsttrace fix` at a time: applying, rolling back and re-applying
each read the journal, change the node and write the journal back, so two
at once would each write back a journal without the other's entry.

The lock is flock(2) on `lock` in the state directory: the kernel lets it
go when its holder exits, however it exits, so a crash leaves no stale
lock. The holder writes who it is into the file (pid, command line, since
when) for the run it turns away. The lock is re-entrant within a process:
the CLI takes it before planning and `apply_plan` takes it again.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from rsttrace.remedy.model import RemedyError
from rsttrace.remedy.paths import Paths


class LockHeld(RemedyError):
    """Another run holds the lock; the message says who."""


_mutex = threading.Lock()
_held: dict[str, list[int]] = {}   # lock path -> [fd, depth]


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} (`{info['command']}`) since {when}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it wrote no details yet)"


def _open(paths: Paths) -> int:
    paths.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK, 0o600)
    except OSError as e:
        raise LockHeld(f"cannot open the lock {paths.lock}: {e.strerror}; "
                       "it must be a regular file (not a link)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockHeld(f"the lock {paths.lock} is not a regular file; move it aside")
    return fd


@contextmanager
def fix_lock(paths: Paths) -> Iterator[None]:
    """Hold the lock for the block; LockHeld at once if another run has it."""
    key = str(paths.lock)
    with _mutex:
        mine = _held.get(key)
        if mine is not None:
            mine[1] += 1
        else:
            fd = _open(paths)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _holder(fd)
                os.close(fd)
                raise LockHeld(f"another rsttrace fix is running: {who} holds {paths.lock}; "
                               "wait for it to finish") from None
            info = {"pid": os.getpid(), "command": " ".join(sys.argv) or "rsttrace",
                    "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
            _held[key] = [fd, 1]
    try:
        yield
    finally:
        with _mutex:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                os.close(entry[0])   # lets the lock go
