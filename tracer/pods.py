"""The Kubernetes pod of a cgroup, for the `pod` field of a reset.

The owner's cgroup v2 id (its kernfs node id) is the inode number of its
directory in the cgroup v2 hierarchy. On a Kubernetes node that directory
lies below the pod's own, whose name carries the pod UID in both cgroup
drivers:

    systemd:  .../kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope
    cgroupfs: .../kubepods/burstable/pod<uid>/<container id>

and the kubelet names each pod's log directory `<namespace>_<name>_<uid>`
(/var/log/pods), which gives the pod's name without asking the API server.
The pod is "namespace/name" when that is known, "uid:<uid>" when only the
UID is, None outside Kubernetes. Looked up once per cgroup and cached; the
tree is read again when an unknown cgroup appears, at most every `rescan_s`
(a cgroup made since the last read waits that long for its pod), and a
cgroup that a fresh read does not find is remembered as no pod.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from .fsnames import mountinfo_path, text

POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
LOG_DIR = re.compile(r"^(?P<ns>[^_]+)_(?P<name>.+)_(?P<uid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
MAX_DIRS = 200_000   # a bound on one walk of the cgroup tree


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
    /sys/fs/cgroup/unified on hybrid hosts)."""
    # Bytes: a mount point need not be UTF-8 (a namespace named with any
    # byte is bind-mounted under /run/netns).
    try:
        lines = Path(mountinfo).read_bytes().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(b" - ")
        fields = left.split()
        if right.split(b" ", 1)[0] == b"cgroup2" and len(fields) > 4:
            return Path(mountinfo_path(fields[4]))
    return None


def pod_uid(cgroup_path: str) -> str | None:
    """The pod UID in a cgroup path (the innermost pod<uid> component)."""
    found = POD_UID.findall(cgroup_path)
    return found[-1].replace("_", "-") if found else None


class PodResolver:
    def __init__(self, root: Path | None = None, pods_log: Path = Path("/var/log/pods"),
                 rescan_s: float = 1.0):
        self.root = root if root is not None else cgroup2_root()
        self.pods_log = pods_log
        self.rescan_s = rescan_s
        self._paths: dict[int, str] = {}      # cgroup id (inode) -> path below root
        self._names: dict[str, str] = {}      # pod uid -> namespace/name
        self._cache: dict[int, str | None] = {}
        self._scanned = -float("inf")

    def __call__(self, cgroup_id: int) -> str | None:
        if cgroup_id in self._cache:
            return self._cache[cgroup_id]
        if self.root is None:
            return None
        path = self._paths.get(cgroup_id)
        if path is None:
            if time.monotonic() - self._scanned < self.rescan_s:
                return None   # not cached: the next read may find it
            self._scan()
            path = self._paths.get(cgroup_id)
            if path is None:
                self._cache[cgroup_id] = None
                return None
        uid = pod_uid(path)
        pod = None if uid is None else self._names.get(uid, f"uid:{uid}")
        self._cache[cgroup_id] = pod
        return pod

    def _scan(self) -> None:
        self._scanned = time.monotonic()
        paths: dict[int, str] = {}
        stack = [(str(self.root), "")]
        while stack and len(paths) < MAX_DIRS:
            full, rel = stack.pop()
            try:
                with os.scandir(full) as it:
                    for d in it:
                        if d.is_dir(follow_symlinks=False):
                            sub = f"{rel}/{d.name}"
                            paths[d.inode()] = sub
                            stack.append((d.path, sub))
            except OSError:
                continue
        self._paths = paths
        names: dict[str, str] = {}
        try:
            with os.scandir(self.pods_log) as it:
                for d in it:
                    m = LOG_DIR.match(d.name)
                    if m:
                        names[m["uid"]] = text(f"{m['ns']}/{m['name']}")
        except OSError:
            pass
        self._names = names
