"""The lab: a Kubernetes-shaped network built from four network namespaces.

    client "pod"            "node" (kube-proxy's job)             backend "pod"
   rtlab-ID-cli            rtlab-ID-node                         rtlab-ID-db
  +--------------+       +-----------------------------+       +----------------+
  | PyMySQL pool | eth0  | lo: VIP 10.96.0.10          | eth1  | MariaDB :3306  |
  | 10.251.0.2   |-------| eth0 10.251.0.1             |-------| abort proxy    |
  +--------------+ veth  | eth1 10.251.1.1             | veth  |   :3308        |
                         | nft: VIP:3306-3308 -> DNAT  |       | 10.251.1.2     |
                         |      masquerade, conntrack  |       |                |
                         | eth2 10.251.2.1             |       | eth1 10.251.3.2|
                         +--------------|--------------+       +-------|--------+
                                        | veth   +----------------+    | veth
                                        +--------| eth0 10.251.2.2|----+
                                                 | eth1 10.251.3.1|
                                                 | user-space     |
                                                 | gateway        |
                                                 +----------------+
                                                  rtlab-ID-gw (a box beyond the node)

The gateway forwards the route to the backend's second address
(10.251.3.0/24) in user space and forgets flows idle longer than
GATEWAY_IDLE_S, answering their next packet with a reset it makes itself
(lab/gateway.py): a cloud NAT gateway or load balancer. The tracer is not
pointed at its namespace (it is not on the node).

No interface of the lab lives in the root namespace and no namespace has a
route out, so lab traffic cannot leave it. One lab at a time per machine: a
lock under /run/rsttrace-lab/ says who runs, and a state file lets the next
start (or `rsttrace demo --down`) remove what a killed run left, including
the global sysctls it changed.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rsttrace.lab import netns
from rsttrace.lab.mariadb import MariaDB
from rsttrace.lab.netns import LabError

STATE_DIR = Path("/run/rsttrace-lab")
PREFIX = "rtlab-"

VIP = "10.96.0.10"
CLIENT = "10.251.0.2"
NODE_CLI = "10.251.0.1"
NODE_DB = "10.251.1.1"
BACKEND = "10.251.1.2"
MYSQL_PORT = 3306
CLOSED_PORT = 3307   # a service port whose backend has no listener
PROXY_PORT = 3308    # through the proxy that aborts idle connections
PROXY_IDLE_CLOSE_S = 0.5
NODE_GW = "10.251.2.1"      # node side of the link to the gateway
GW_IN = "10.251.2.2"
GW_OUT = "10.251.3.1"
REMOTE_DB = "10.251.3.2"    # the backend's second address, reached through the gateway
GATEWAY_IDLE_S = 2.0
GW_TABLE = 100              # the backend's routing table for replies from REMOTE_DB
FW_TABLE = "rtlab_fw"       # the node's nft table of a scenario's reject rule
LOCK_POLL_S = 0.5

Progress = Callable[[str], None]


@dataclass
class LabState:
    """What a run made, persisted so a later run can undo it."""
    run_id: str
    pid: int
    namespaces: list[str]
    workdir: str
    kept: bool = False
    # Global (root-namespace) sysctls changed, with their original values.
    global_sysctls: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)


def _state_path() -> Path:
    return STATE_DIR / "state.json"


def read_state() -> LabState | None:
    try:
        return LabState(**json.loads(_state_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(st: LabState) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(st)))
    os.replace(tmp, _state_path())


def _read_global(name: str) -> str:
    return Path(netns.sysctl_path(name)).read_text().strip()


def _write_global(name: str, value: str | int) -> None:
    Path(netns.sysctl_path(name)).write_text(f"{value}\n")


def _restore_globals(st: LabState) -> list[str]:
    done = []
    for name, value in list(st.global_sysctls.items()):
        try:
            _write_global(name, value)
            done.append(f"{name}={value}")
            del st.global_sysctls[name]
        except OSError as e:
            print(f"rsttrace lab: could not restore {name}={value}: {e}", file=sys.stderr)
    return done


def _remove(st: LabState | None, *, prefix_sweep: bool) -> list[str]:
    """Undo a run: processes, namespaces, files, global sysctls."""
    said = []
    names = set(st.namespaces if st else [])
    if prefix_sweep:
        names |= set(netns.list_prefixed(PREFIX))
    for ns in sorted(names):
        if netns.exists(ns):
            netns.delete(ns)
            said.append(f"namespace {ns}")
    if st:
        restored = _restore_globals(st)
        said += restored
        if st.workdir and Path(st.workdir).is_dir() and Path(st.workdir).parent == STATE_DIR:
            shutil.rmtree(st.workdir, ignore_errors=True)
    if prefix_sweep and STATE_DIR.is_dir():
        # Data directories of runs whose state was lost (a crash between
        # creating the directory and writing the state).
        for d in STATE_DIR.iterdir():
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
    try:
        _state_path().unlink()
    except FileNotFoundError:
        pass
    return said


def _acquire_lock(wait_s: float = 0.0) -> int:
    """The lab lock; with `wait_s` > 0, wait up to that long for a running
    lab to finish (test suites that run side by side queue instead of failing)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATE_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(LOCK_POLL_S)
                continue
            os.close(fd)
            st = read_state()
            who = f" (pid {st.pid})" if st else ""
            waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
            raise LabError(f"another rsttrace lab is running{who}{waited}: wait for it to "
                           "finish, or stop it before starting a new one") from None


def teardown(progress: Progress | None = None) -> list[str]:
    """`rsttrace demo --down`: remove a kept or stale lab. Fails while a run is active."""
    fd = _acquire_lock()
    try:
        return _remove(read_state(), prefix_sweep=True)
    finally:
        os.close(fd)


class Lab:
    """Build with `up()` (or `with Lab() as lab:`), drive with `client()` and
    the sysctl helpers, remove with `down()`; `keep()` leaves it up."""

    def __init__(self, run_id: str | None = None, progress: Progress | None = None,
                 lock_wait_s: float = 0.0):
        self.lock_wait_s = lock_wait_s
        self.run_id = run_id or secrets.token_hex(2)
        self.cli = f"{PREFIX}{self.run_id}-cli"
        self.node = f"{PREFIX}{self.run_id}-node"
        self.db = f"{PREFIX}{self.run_id}-db"
        self.gw = f"{PREFIX}{self.run_id}-gw"
        self.workdir = STATE_DIR / self.run_id
        self.progress = progress or (lambda _m: None)
        self.state = LabState(self.run_id, os.getpid(), [self.cli, self.node, self.db, self.gw],
                              str(self.workdir))
        self.mariadb = MariaDB(self.db, f"{BACKEND},{REMOTE_DB}", MYSQL_PORT, self.workdir)
        self.proxy: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._kept = False
        self._old_term: Any = None

    # -- life cycle ----------------------------------------------------------
    def up(self) -> "Lab":
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, nftables): run it with sudo")
        self._lock_fd = _acquire_lock(self.lock_wait_s)
        try:
            old = read_state()
            if old and old.kept:
                raise LabError(f"a kept lab ({old.run_id}) is still up: "
                               "remove it with `rsttrace demo --down` first")
            gone = _remove(old, prefix_sweep=True)
            if gone:
                self.progress("removed a stale lab: " + ", ".join(gone))
            _write_state(self.state)
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        self.progress(f"lab {self.run_id}: namespaces {self.cli}, {self.node}, {self.db}, {self.gw}")
        for ns in (self.cli, self.node, self.db, self.gw):
            netns.add(ns)
        _veth((self.cli, "eth0", CLIENT), (self.node, "eth0", NODE_CLI))
        _veth((self.db, "eth0", BACKEND), (self.node, "eth1", NODE_DB))
        netns.run(["ip", "-n", self.node, "addr", "add", f"{VIP}/32", "dev", "lo"])
        netns.run(["ip", "-n", self.cli, "route", "add", "default", "via", NODE_CLI])
        netns.run(["ip", "-n", self.db, "route", "add", "default", "via", NODE_DB])
        netns.set_sysctl(self.node, "net.ipv4.ip_forward", 1)
        # kube-proxy's shape: the service VIP DNATed to the backend pod, and
        # masqueraded so replies come back through the node's conntrack.
        netns.ns_exec(self.node, ["nft", "-f", "-"], input=f"""
table ip rtlab {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP} tcp dport {{ {MYSQL_PORT}, {CLOSED_PORT}, {PROXY_PORT} }} dnat to {BACKEND}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip daddr {BACKEND} masquerade
  }}
}}
""")
        self._build_gateway()
        self.node_defaults()
        self.progress("MariaDB: initialising a data directory")
        self.mariadb.install()
        self.mariadb.start()
        self.state.pids.append(self.mariadb.proc.pid)  # type: ignore[union-attr]
        self.proxy = subprocess.Popen(
            ["ip", "netns", "exec", self.db, sys.executable, "-m", "rsttrace.lab.abortproxy",
             f"{BACKEND}:{PROXY_PORT}", f"{BACKEND}:{MYSQL_PORT}", str(PROXY_IDLE_CLOSE_S)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.state.pids.append(self.proxy.pid)
        self.gateway = subprocess.Popen(
            ["ip", "netns", "exec", self.gw, sys.executable, "-m", "rsttrace.lab.gateway",
             "--idle", str(GATEWAY_IDLE_S), f"eth0={_mac(self.node, 'eth2')}", f"eth1={_mac(self.db, 'eth1')}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.state.pids.append(self.gateway.pid)
        _write_state(self.state)
        self.progress(f"MariaDB {self.mariadb_version()} ready at {BACKEND}:{MYSQL_PORT}, "
                      f"service VIP {VIP}:{MYSQL_PORT}")

    def _build_gateway(self) -> None:
        """The gateway beyond the node, on the path to the backend's second
        address: node eth2 -- gw eth0 | gw eth1 -- db eth1."""
        _veth((self.node, "eth2", NODE_GW), (self.gw, "eth0", GW_IN))
        _veth((self.db, "eth1", REMOTE_DB), (self.gw, "eth1", GW_OUT))
        # The gateway's kernel forwards nothing (and so sends no ICMP for
        # what it does not forward): its user-space process does.
        netns.set_sysctl(self.gw, "net.ipv4.ip_forward", 0)
        netns.run(["ip", "-n", self.node, "route", "add", f"{REMOTE_DB.rsplit('.', 1)[0]}.0/24", "via", GW_IN])
        # Replies from the second address go back through the gateway.
        netns.run(["ip", "-n", self.db, "route", "add", "default", "via", GW_OUT, "table", str(GW_TABLE)])
        netns.run(["ip", "-n", self.db, "rule", "add", "from", REMOTE_DB, "table", str(GW_TABLE)])

    def node_defaults(self) -> None:
        """The node's conntrack as a scenario starts: strict (no mid-stream
        pick-up, like a stateful load balancer), timeouts long."""
        for name, value in (("net.netfilter.nf_conntrack_tcp_loose", 0),
                            ("net.netfilter.nf_conntrack_tcp_be_liberal", 0),
                            ("net.netfilter.nf_conntrack_tcp_timeout_established", 432000)):
            netns.set_sysctl(self.node, name, value)
        # a scenario's own rules, if one was stopped before removing them
        netns.ns_exec(self.node, ["nft", "delete", "table", "ip", FW_TABLE], check=False)
        netns.ns_exec(self.node, ["conntrack", "-F"], check=False)

    def node_nft(self, script: str) -> None:
        """nftables commands in the node (a scenario's extra rules)."""
        netns.ns_exec(self.node, ["nft", "-f", "-"], input=script)

    def keep(self) -> None:
        """Leave the lab up when this process ends (`rsttrace demo --keep`)."""
        self._kept = True
        self.state.kept = True
        self.state.pid = 0
        _write_state(self.state)

    def down(self) -> None:
        if self._kept:
            self._release_lock()
            return
        for proc in (self.proxy, self.gateway):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.mariadb.stop()
        _remove(self.state, prefix_sweep=False)
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Lab":
        # SIGTERM becomes an exception so the `with` block's teardown runs.
        self._old_term = signal.getsignal(signal.SIGTERM)
        if self._old_term in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_terminated)
        return self.up()

    def __exit__(self, *exc: object) -> None:
        try:
            self.down()
        finally:
            if self._old_term is not None:
                signal.signal(signal.SIGTERM, self._old_term)

    # -- driving it ----------------------------------------------------------
    def inodes(self) -> dict[str, int]:
        """The namespaces of the node and its pods: what the tracer watches
        (the gateway's is beyond the node)."""
        return {ns: netns.inode(ns) for ns in (self.cli, self.node, self.db)}

    def set_node_sysctl(self, name: str, value: int) -> None:
        netns.set_sysctl(self.node, name, value)

    def client_sysctl(self, name: str) -> str:
        return netns.get_sysctl(self.cli, name)

    def set_global_sysctl(self, name: str, value: int) -> None:
        """Change a root-namespace-only sysctl (nf_conntrack_max); the original
        value is persisted first so even a killed run gets it back."""
        if name not in self.state.global_sysctls:
            self.state.global_sysctls[name] = _read_global(name)
            _write_state(self.state)
        _write_global(name, value)

    def restore_globals(self) -> list[str]:
        done = _restore_globals(self.state)
        _write_state(self.state)
        return done

    def node_conntrack(self) -> dict[str, int]:
        return netns.conntrack_stats(self.node)

    def client(self, spec: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
        """Run the MySQL client in the client namespace; returns its report."""
        spec = {"host": VIP, "port": MYSQL_PORT, **spec}
        p = netns.ns_exec(self.cli, [sys.executable, "-m", "rsttrace.lab.client", json.dumps(spec)],
                          timeout=timeout_s, check=False)
        if p.returncode != 0 or not p.stdout.strip():
            raise LabError(f"lab client failed ({p.returncode}): {p.stderr.strip()[-400:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    def mariadb_version(self) -> str:
        p = netns.run(["/usr/sbin/mariadbd", "--version"], check=False)
        parts = p.stdout.split()
        return parts[2] if len(parts) > 2 else "?"


def _veth(a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
    """A veth pair between two lab namespaces, each end (namespace, device,
    address in a /24) up. Created inside the first namespace: no end ever
    exists in the root namespace."""
    netns.run(["ip", "-n", a[0], "link", "add", a[1], "type", "veth", "peer", "name", b[1], "netns", b[0]])
    for ns, dev, addr in (a, b):
        netns.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
        netns.run(["ip", "-n", ns, "link", "set", dev, "up"])


def _mac(ns: str, dev: str) -> str:
    p = netns.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev])
    return json.loads(p.stdout)[0]["address"]


class Terminated(Exception):
    """SIGTERM arrived: unwinding so the lab is torn down."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")
