"""Context collectors: per network namespace conntrack counters and the
sysctls that decide whether an idle flow survives.

Namespaces are found from /run/netns (named) and /proc/*/ns/net (any
namespace with a process). Values are read inside each namespace by a
worker thread that enters it with setns(2) (which moves only the calling
thread) and returns to its own namespace before the next, so the
collector never disturbs the rest of the process. Cheap: plain /proc reads,
no netlink dumps of the conntrack table, and each namespace's /proc/sys
files opened once and read again in place (_SysctlFiles).

Each namespace is recorded with its inode, which the kernel reuses, and its
cookie (tracer/netnsid.py), which it does not: a recording names the
namespace it saw, not whichever one has the inode later. Names read from
/run/netns are recorded as text (tracer/fsnames.py): a name with bytes
that are not UTF-8 shows them as \\xNN.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import netnsid
from .fsnames import text
from .ipvs import read_timeouts as read_ipvs_timeouts
from .rules import read_reset_rules

SYSCTLS = {
    "nf_conntrack_tcp_timeout_established": "net/netfilter/nf_conntrack_tcp_timeout_established",
    "nf_conntrack_tcp_timeout_close_wait": "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "nf_conntrack_tcp_timeout_time_wait": "net/netfilter/nf_conntrack_tcp_timeout_time_wait",
    "nf_conntrack_tcp_be_liberal": "net/netfilter/nf_conntrack_tcp_be_liberal",
    "nf_conntrack_tcp_loose": "net/netfilter/nf_conntrack_tcp_loose",
    "tcp_keepalive_time": "net/ipv4/tcp_keepalive_time",
    "tcp_keepalive_intvl": "net/ipv4/tcp_keepalive_intvl",
    "tcp_keepalive_probes": "net/ipv4/tcp_keepalive_probes",
    "vs_expire_nodest_conn": "net/ipv4/vs/expire_nodest_conn",
}
CT_STAT_KEYS = ("drop", "early_drop", "invalid", "insert_failed", "found", "search_restart",
                "chaintoolong", "clash_resolve", "insert")
# /proc/sys files read per namespace (conntrack count, max, buckets and SYSCTLS)
FILES_PER_NETNS = 3 + len(SYSCTLS)
# descriptors the collector may keep open: at most this share of the soft limit
FD_SHARE = 0.5
# a /proc/sys file found missing in a namespace is looked for again after this
ABSENT_TTL_S = 30.0


class ContextError(Exception):
    pass


@dataclass
class Netns:
    inode: int
    name: str  # as text: `init`, the /run/netns name (fsnames.text), or `pid:N`
    path: str  # something that can be opened to enter it (the real bytes)


def list_namespaces() -> dict[int, Netns]:
    """Every network namespace on the host, by inode. Named ones
    (/run/netns) keep their name; the root namespace is `init`."""
    found: dict[int, Netns] = {}
    # kthreadd (pid 2) always lives in the initial namespace; pid 1 may be
    # a sandbox's own init whose namespace cannot even be read.
    for init_path in ("/proc/2/ns/net", "/proc/1/ns/net"):
        try:
            init_ino = os.stat(init_path).st_ino
        except OSError:
            continue
        found[init_ino] = Netns(init_ino, "init", init_path)
        break
    run = Path("/run/netns")
    if run.is_dir():
        for entry in sorted(run.iterdir()):
            try:
                ino = entry.stat().st_ino
            except OSError:
                continue
            if ino not in found or found[ino].name.startswith("pid:"):
                found[ino] = Netns(ino, text(entry.name), str(entry))
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        path = f"/proc/{pid}/ns/net"
        # the link's text, "net:[INODE]", costs half a stat of it: this
        # walk visits every process on the host for each snapshot
        try:
            link = os.readlink(path)
        except OSError:
            continue
        if not (link.startswith("net:[") and link.endswith("]")):
            continue
        ino = int(link[5:-1])
        if ino not in found:
            found[ino] = Netns(ino, f"pid:{pid}", path)
    return found


def resolve_netns(spec: str) -> Netns:
    """`--netns NAME|PID` -> the namespace; a clear error otherwise."""
    if spec.isdigit():
        path = f"/proc/{spec}/ns/net"
        try:
            ino = os.stat(path).st_ino
        except OSError:
            raise ContextError(f"--netns {spec}: no process {spec} (or no permission to see "
                               "its namespace); give a live PID or a name from `ip netns list`") from None
        ns = list_namespaces().get(ino)
        return Netns(ino, ns.name if ns else f"pid:{spec}", path)
    path = f"/run/netns/{spec}"
    try:
        ino = os.stat(path).st_ino
    except OSError:
        names = ", ".join(sorted(text(p.name) for p in Path("/run/netns").glob("*"))) or "none"
        raise ContextError(f"--netns {text(spec)}: no such namespace in /run/netns (known: "
                           f"{names}); give a name from `ip netns list` or a PID") from None
    return Netns(ino, text(spec), path)


def _parse_int(raw: bytes) -> int | None:
    try:
        return int(raw.split()[0])
    except (ValueError, IndexError):
        return None


class _SysctlFiles:
    """The /proc/sys files of one network namespace, opened while the
    calling thread is in it and kept open: an open file goes on reading
    that namespace's value, and reading it again (pread) costs a small
    fraction of opening it (the path lookup; docs/PERFORMANCE.md has the
    figures). With a dozen files per namespace and every namespace each
    period, opening was most of a snapshot. These files hold no reference on the namespace: once it is
    gone, reading fails (ENOENT) and the file is opened again, in the
    namespace the thread is in now. `keep` False: opened and closed on each
    read (past the collector's budget of descriptors).

    The namespace's cookie is kept here too: a kept file that still reads
    proves the namespace it was opened in is alive, and a live namespace's
    inode is its own, so the cookie read with those files still holds. A
    namespace deleted and its inode taken by a new one fails those reads
    first (the kernel unregisters a namespace's sysctl tables before it
    frees its inode), which drops the cookie with the files."""

    def __init__(self, keep: bool = True):
        self.keep = keep
        self._fds: dict[str, int] = {}
        self._absent: dict[str, float] = {}   # file -> when it was found missing
        self._cookie: int | None = None

    def read_int(self, rel: str) -> int | None:
        """/proc/sys/`rel` as an integer; None where the file is absent (a
        module not loaded, an older kernel: looked for again after
        ABSENT_TTL_S, so a module loaded later is seen then)."""
        fd = self._fds.get(rel)
        if fd is not None:
            try:
                return _parse_int(os.pread(fd, 64, 0))
            except OSError:
                del self._fds[rel]
                os.close(fd)
                self._cookie = None
        missing = self._absent.get(rel)
        if missing is not None and time.monotonic() - missing < ABSENT_TTL_S:
            return None
        try:
            fd = os.open("/proc/sys/" + rel, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            if self.keep:
                self._absent[rel] = time.monotonic()
            return None
        self._absent.pop(rel, None)
        try:
            value = _parse_int(os.pread(fd, 64, 0))
        except OSError:
            value = None
        if self.keep and value is not None:
            self._fds[rel] = fd
        else:
            os.close(fd)
        return value

    def cookie(self) -> int | None:
        """The cookie of the namespace the calling thread is in (the one
        these files belong to); read once while kept files vouch for it.
        Call it after this snapshot's reads, which are what vouch."""
        if self._cookie is not None and self._fds:
            return self._cookie
        try:
            cookie = netnsid.cookie_here()
        except OSError:
            return None
        if self.keep:
            self._cookie = cookie
        return cookie

    def __len__(self) -> int:
        return len(self._fds)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._cookie = None


def parse_ct_stat(text: str) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack: a header, then one hex row per CPU.
    Columns differ between kernels, so they are taken from the header."""
    lines = text.split("\n")
    cols = lines[0].split()
    sums = dict.fromkeys(cols, 0)
    for line in lines[1:]:
        vals = line.split()
        if len(vals) != len(cols):
            continue
        for c, v in zip(cols, vals):
            sums[c] += int(v, 16)
    out = {k: sums[k] for k in CT_STAT_KEYS if k in sums}
    if "clash_resolve" not in out and "clashres" in sums:
        out["clash_resolve"] = sums["clashres"]
    return out


def _read_here(files: _SysctlFiles) -> dict:
    """Everything for the namespace the calling thread is in (`files`: its
    /proc/sys files)."""
    ct = None
    count = files.read_int("net/netfilter/nf_conntrack_count")
    if count is not None:
        ct = {"count": count,
              "max": files.read_int("net/netfilter/nf_conntrack_max"),
              "buckets": files.read_int("net/netfilter/nf_conntrack_buckets")}
        try:
            with open("/proc/thread-self/net/stat/nf_conntrack") as fh:
                ct.update(parse_ct_stat(fh.read()))
        except OSError:
            pass
    sysctl = {}
    for key, rel in SYSCTLS.items():
        v = files.read_int(rel)
        if v is not None:
            sysctl[key] = v
    # IPVS timeouts are per namespace; None where IPVS is absent
    return {"cookie": files.cookie(), "ct": ct, "sysctl": sysctl,
            "tcp_sockets": _tcp_sockets(), "ipvs": read_ipvs_timeouts()}


def _tcp_sockets() -> int:
    """TCP sockets of the namespace the calling thread is in, from the
    kernel's per-namespace counters (/proc/net/sockstat and sockstat6:
    in use, both families, plus time-wait). Reading /proc/net/tcp instead
    walks the host's whole socket hash, once per namespace, taking its
    bucket locks: during a storm that slowed the traced workload."""
    total = 0
    for name in ("sockstat", "sockstat6"):
        try:
            with open(f"/proc/thread-self/net/{name}") as fh:
                total += parse_sockstat(fh.read())
        except OSError:
            pass
    return total


def parse_sockstat(text: str) -> int:
    """'TCP: inuse 5 orphan 0 tw 2 alloc 9 mem 1' -> 7 (inuse + tw);
    'TCP6: inuse 1' -> 1."""
    for line in text.splitlines():
        head, _, rest = line.partition(":")
        if head in ("TCP", "TCP6"):
            fields = rest.split()
            values = dict(zip(fields[::2], fields[1::2]))
            return sum(int(values.get(k, 0)) for k in ("inuse", "tw"))
    return 0


def detect_nat() -> bool | None:
    """Whether the namespace the calling thread is in has NAT rules: an
    nftables chain of type nat (nft rules, and kube-proxy through
    iptables-nft) or a legacy iptables nat table. None when unknown.
    `nft list chains` prints chain headers only, so it stays cheap on nodes
    with thousands of rules; a child process starts in this thread's
    namespace."""
    try:
        with open("/proc/thread-self/net/ip_tables_names") as fh:
            if "nat" in fh.read().split():
                return True
    except OSError:
        pass
    try:
        r = subprocess.run(["nft", "list", "chains"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return "type nat hook" in r.stdout


NAT_TTL_S = 30.0
# Firewall rules that answer with a reset are read only in a namespace
# where netfilter dropped a packet (a reject drops the packet it answers),
# at once after the first drop, then at most every RULES_TTL_S while drops
# go on (a node's ruleset can be large), and recorded until RULES_KEEP_S
# after the last drop.
RULES_TTL_S = 30.0
RULES_KEEP_S = 60.0


class Collector:
    """Samples every namespace that has sockets or conntrack entries (or
    the ones asked for). One worker thread does the setns dance.
    `ipvs_reader` replaces the IPVS timeouts reader (generic netlink,
    tracer/ipvs.py); it runs inside each namespace."""

    def __init__(self, only: list[int] | None = None, ipvs_reader=None):
        self.only = set(only) if only else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rsttrace-ctx")
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._ipvs_reader = ipvs_reader
        # (inode, name) -> (when, nat); inodes of deleted namespaces are reused
        self._nat: dict[tuple[int, str], tuple[float, bool | None]] = {}
        self.names: dict[int, str] = {}
        # inode -> monotonic time of its last netfilter drop (note_drops),
        # and -> (read at, rules that reset) once read
        self._drop_seen: dict[int, float] = {}
        self._rules: dict[int, tuple[float, list | None]] = {}
        self._rules_lock = threading.Lock()
        # inode -> cookie of every namespace read in the last snapshot, listed or not
        self.cookies: dict[int, int | None] = {}
        # inode -> its open /proc/sys files, for as many namespaces as the
        # descriptor budget allows (the rest open and close on each read)
        self._files: dict[int, _SysctlFiles] = {}
        self._keep_netns = int(_fd_budget() * FD_SHARE) // FILES_PER_NETNS

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for files in self._files.values():
            files.close()
        self._files.clear()
        try:
            os.close(self._home)
        except OSError:
            pass

    def _files_for(self, ino: int) -> _SysctlFiles:
        files = self._files.get(ino)
        if files is None:
            files = _SysctlFiles(keep=len(self._files) < self._keep_netns)
            if files.keep:
                self._files[ino] = files
        return files

    def _forget_gone(self, present: set[int]) -> None:
        """Close the files of namespaces no longer on the host."""
        for ino in [i for i in self._files if i not in present]:
            self._files.pop(ino).close()
        with self._rules_lock:
            for d in (self._drop_seen, self._rules):
                for ino in [i for i in d if i not in present]:
                    del d[ino]

    def note_drops(self, inodes) -> bool:
        """Netfilter dropped packets in these namespaces (the tracer saw
        it): their reject rules go into the next snapshots. True when one
        of them is due a reading (then take a snapshot soon)."""
        now = time.monotonic()
        due = False
        with self._rules_lock:
            for ino in inodes:
                self._drop_seen[ino] = now
                hit = self._rules.get(ino)
                if hit is None or now - hit[0] >= RULES_TTL_S:
                    due = True
        return due

    def _rules_here(self, ino: int) -> tuple[bool, list | None]:
        """(listed, rules) for the namespace the thread is in now."""
        now = time.monotonic()
        with self._rules_lock:
            seen = self._drop_seen.get(ino)
            hit = self._rules.get(ino)
        if seen is None or now - seen > RULES_KEEP_S:
            return False, None
        if hit is None or (hit[0] < seen and now - hit[0] >= RULES_TTL_S):
            hit = (now, read_reset_rules())
            with self._rules_lock:
                self._rules[ino] = hit
        return True, hit[1]

    def _sample_all(self) -> list[dict]:
        namespaces = list_namespaces()
        self.names = {ino: ns.name for ino, ns in namespaces.items()}
        home_ino = os.fstat(self._home).st_ino
        out = []
        cookies: dict[int, int | None] = {}
        for ino, ns in namespaces.items():
            if self.only is not None and ino not in self.only:
                continue
            try:
                fd = os.open(ns.path, os.O_RDONLY)
            except OSError:
                continue  # the process went away
            try:
                if ino != home_ino:
                    netnsid.setns(fd)
                try:
                    data = _read_here(self._files_for(ino))
                    if self._ipvs_reader is not None:
                        data["ipvs"] = self._ipvs_reader()
                    data["nat"] = self._nat_cached((ino, ns.name))
                    listed, rules = self._rules_here(ino)
                    if listed:
                        data["rules"] = rules
                finally:
                    if ino != home_ino:
                        netnsid.setns(self._home)
            except OSError:
                continue
            finally:
                os.close(fd)
            data.setdefault("ipvs", None)
            cookies[ino] = data["cookie"]
            ct = data["ct"]
            # a NAT namespace matters even when its table is empty: its
            # timeouts decide which idle flows it forgets
            interesting = (data["tcp_sockets"] > 0 or data.get("nat") or "rules" in data or (ct and (
                ct["count"] or ct.get("drop") or ct.get("invalid") or ct.get("early_drop"))))
            if self.only is None and not interesting:
                continue
            out.append({"netns": ino, "name": ns.name, **data})
        self._forget_gone(set(namespaces))
        self.cookies = cookies
        return out

    def _nat_cached(self, key: tuple[int, str]) -> bool | None:
        """NAT rules change rarely and asking nft costs a process: once per
        namespace every NAT_TTL_S."""
        now = time.monotonic()
        hit = self._nat.get(key)
        if hit is None or now - hit[0] > NAT_TTL_S:
            hit = (now, detect_nat())
            self._nat[key] = hit
        return hit[1]

    def snapshot(self) -> dict:
        """A `ctx` record (docs/EVENTS.md), taken now."""
        namespaces = self._pool.submit(self._sample_all).result()
        return {"kind": "ctx", "t": round(time.time(), 6), "namespaces": namespaces}


def _fd_budget() -> int:
    """The soft limit on open descriptors, raised toward the hard limit
    (up to 16,384) where it is lower: a node with a few hundred pods has
    as many namespaces, each with a dozen files kept open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return 16384 if soft == resource.RLIM_INFINITY else soft


class PeriodicSampler:
    """Calls `collector.snapshot()` every `period` seconds into `sink`."""

    def __init__(self, collector: Collector, period: float, sink):
        self.collector, self.period, self.sink = collector, period, sink
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rsttrace-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Take the next snapshot now rather than at the end of the period
        (a reject's rule must be read while its reset's verdict waits)."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.period)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sink(self.collector.snapshot())
            except Exception:  # a namespace vanishing mid-read must not kill sampling
                continue

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
