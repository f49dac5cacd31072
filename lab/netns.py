"""Small wrappers around `ip netns` and per-namespace sysctls.

Everything here runs `ip` / `nft` as subprocesses: the lab is built once per
run, so a few milliseconds per command do not matter, and a subprocess never
leaves the calling thread inside another namespace by mistake.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class LabError(Exception):
    """The lab could not be built or driven; the message says what to do."""


def run(cmd: list[str], *, input: str | None = None, check: bool = True,
        timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    try:
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise LabError(f"{cmd[0]} not found: run `make install` (scripts/install.sh) first") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from e
    if check and p.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {(p.stderr or p.stdout).strip()}")
    return p


def ns_exec(ns: str, cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return run(["ip", "netns", "exec", ns, *cmd], **kw)


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def inode(ns: str) -> int:
    """The namespace's inode: the id the tracer reports as `netns`."""
    return os.stat(NETNS_DIR / ns).st_ino


def tcp_out_rsts(ns: str) -> int:
    """Resets the namespace's kernel says it sent (TcpOutRsts in its
    /proc/net/snmp): the truth recordings and benchmarks are checked with."""
    text = ns_exec(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    tcp = [line.split() for line in text if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("OutRsts")])


def list_prefixed(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def add(ns: str) -> None:
    run(["ip", "netns", "add", ns])
    ns_exec(ns, ["ip", "link", "set", "lo", "up"])


def pids(ns: str) -> list[int]:
    p = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def kill_all(ns: str, grace_s: float = 5.0) -> None:
    """Stop every process still living in `ns` (the lab's server and clients),
    politely first; deleting a namespace does not stop its processes."""
    victims = pids(ns)
    for pid in victims:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while victims and time.monotonic() < deadline:
        victims = [p for p in victims if alive(p)]
        time.sleep(0.05)
    for pid in victims:
        _signal(pid, signal.SIGKILL)


def delete(ns: str) -> None:
    if exists(ns):
        kill_all(ns)
        run(["ip", "netns", "delete", ns], check=False)


def sysctl_path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def set_sysctl(ns: str, name: str, value: int | str) -> None:
    ns_exec(ns, ["sh", "-c", f"echo {value} > {sysctl_path(name)}"])


def get_sysctl(ns: str, name: str) -> str:
    return ns_exec(ns, ["cat", sysctl_path(name)]).stdout.strip()


def conntrack_stats(ns: str) -> dict[str, int]:
    """`/proc/net/stat/nf_conntrack` of `ns`, summed over CPUs, read the way
    the tracer's context collector reads it."""
    from rsttrace.tracer.context import parse_ct_stat
    return parse_ct_stat(ns_exec(ns, ["cat", "/proc/net/stat/nf_conntrack"]).stdout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
