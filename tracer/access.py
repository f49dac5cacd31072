"""What tracing needs of its process and of the machine, checked before
anything is attached; whatever is missing is said in one line that names
what to add.

In a container (the DaemonSet of deploy/kubernetes) the usual misses are a
capability left out of the securityContext and a host path not mounted, so
the lines name both forms. Root on a host has every capability, and
rsttrace mounts tracefs itself where it can.

Capabilities: CAP_SYS_ADMIN is needed in any case (setns into other
network namespaces, mounting tracefs), and the kernel accepts it for BPF
and perf events too (bpf_capable(), perfmon_capable()), so CAP_BPF and
CAP_PERFMON add nothing to it.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path

from . import kernel

BTF_PATH = Path("/sys/kernel/btf/vmlinux")


@dataclass(frozen=True)
class Need:
    cap: str    # as Kubernetes and podman spell it (CAP_ left off)
    bit: int    # its bit in the capability sets (linux/capability.h, a fixed ABI)
    why: str


NEEDS = (
    Need("SYS_ADMIN", 21, "enter each network namespace and load the BPF programs"),
    Need("SYS_PTRACE", 19, "see the network namespace of every process"),
    Need("NET_ADMIN", 12, "read NAT rules and IPVS timeouts"),
)
# Before 5.11 the kernel charges BPF maps to RLIMIT_MEMLOCK, and bcc raises
# the limit when a map does not fit (the rings take 16 MiB and more).
MEMLOCK = Need("SYS_RESOURCE", 24, "raise the locked-memory limit BPF maps count against "
                                   "before Linux 5.11")


def effective_caps(status: str) -> int:
    """The CapEff mask of a /proc/PID/status text."""
    m = re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.MULTILINE)
    return int(m.group(1), 16) if m else 0


def needed(release: str, memlock_unlimited: bool) -> list[Need]:
    out = list(NEEDS)
    m = re.match(r"(\d+)\.(\d+)", release)
    if m and (int(m[1]), int(m[2])) < (5, 11) and not memlock_unlimited:
        out.append(MEMLOCK)
    return out


def missing_caps_line(caps: int, needs: list[Need]) -> str | None:
    missing = [n for n in needs if not caps >> n.bit & 1]
    if not missing:
        return None
    word = "capability" if len(missing) == 1 else "capabilities"
    return (f"tracing needs the {word} " + "; ".join(f"{n.cap} to {n.why}" for n in missing)
            + ": add " + ", ".join(n.cap for n in missing)
            + " to the container's securityContext.capabilities.add (or run it privileged)")


def tracefs_line(note: str) -> str:
    # mount(8)'s message may take two lines, the second a hint at dmesg
    note = " ".join(note.split()).replace(
        " dmesg(1) may have more information after failed mount system call.", "").rstrip(".")
    return (f"{note}: mount the host's {kernel.TRACEFS} into the container (read-only), "
            f"or on the host: mount -t tracefs nodev {kernel.TRACEFS}")


def btf_line() -> str:
    return (f"no BTF at {BTF_PATH}: rsttrace reads the kernel's struct offsets and enum values "
            "from it; it needs a kernel built with CONFIG_DEBUG_INFO_BTF (in a container that "
            f"hides it, mount the host's {BTF_PATH.parent} read-only)")


def problem() -> str | None:
    """The first thing missing, as one line; None when nothing is. Checked
    in the order that lets the next check work: capabilities (mounting
    tracefs needs CAP_SYS_ADMIN), tracefs, BTF."""
    try:
        caps = effective_caps(Path("/proc/self/status").read_text())
    except OSError:
        caps = 0
    unlimited = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1] == resource.RLIM_INFINITY
    line = missing_caps_line(caps, needed(os.uname().release, unlimited))
    if line:
        return line
    ok, note = kernel.ensure_tracefs()
    if not ok:
        return tracefs_line(note)
    if not BTF_PATH.exists():
        return btf_line()
    return None
