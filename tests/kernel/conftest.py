"""Kernel tier: real BPF on the running kernel, real namespaces, real resets.

One TraceSession per module (compiling takes about half a second); each test
makes its own throwaway namespaces (prefix rtk-) and removes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import sys
import time
import uuid

import pytest
from resetloop import CONNECT_MANY

pytestmark = pytest.mark.kernel

PY = sys.executable


@pytest.fixture(scope="module")
def session():
    from rsttrace.tracer.session import TraceSession
    s = TraceSession(ctx_period_s=0)
    s.start()
    yield s
    s.stop()


class Collected:
    def __init__(self, session):
        self.session = session
        self.records: list[dict] = []

    def wait_for(self, pred, n=1, timeout=5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.records += self.session.poll(0.1)
            hits = [r for r in self.records if pred(r)]
            if len(hits) >= n:
                return hits
        return [r for r in self.records if pred(r)]


@pytest.fixture
def collect(session):
    session.poll(0)  # drop what earlier tests left
    return Collected(session)


ECHO_SERVER = textwrap.dedent("""
    import socket, threading
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("10.77.2.2", 3306)); srv.listen(8)
    print("ready", flush=True)
    def serve(c):
        # keep the connection open after a reset on the other side, like a database
        while True:
            d = c.recv(100)
            if not d:
                return
            c.sendall(d)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
""")

IDLE_CLIENT = textwrap.dedent("""
    import socket, sys, time, json
    pause = float(sys.argv[1])
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 7)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
    c.settimeout(5)
    c.connect(("10.96.0.10", 3306))
    c.sendall(b"ping"); c.recv(4)
    time.sleep(pause)
    err = ""
    try:
        c.sendall(b"again"); c.recv(5)
    except OSError as e:
        err = repr(e)
    print(json.dumps({"port": c.getsockname()[1], "err": err}))
""")

ROUTER_NFT = """
table ip lab {
  chain pre { type nat hook prerouting priority dstnat; ip daddr 10.96.0.10 tcp dport 3306 dnat to 10.77.2.2:3306; }
  chain post { type nat hook postrouting priority srcnat; ip daddr 10.77.2.2 masquerade; }
}"""




class Netns:
    """Throwaway namespaces; connected only to each other."""

    def __init__(self):
        self.tag = "rtk-" + uuid.uuid4().hex[:6]
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def add(self, short: str) -> str:
        name = f"{self.tag}-{short}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        self.run(name, "ip link set lo up")
        return name

    def inode(self, name: str) -> int:
        return os.stat(f"/run/netns/{name}").st_ino

    def run(self, name: str, cmd: str, check=True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", name, "sh", "-c", cmd], check=check,
                              capture_output=True, text=True, timeout=30)

    def python(self, name: str, code: str, args: tuple[str, ...] = (), **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", name, PY, "-c", code, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        return p

    def refuse(self, name: str, n: int, seconds: float = 20) -> int:
        """Up to `n` connects to a closed port on `name`'s loopback, each
        answered by a reset, for at most `seconds`: how many were made."""
        p = subprocess.run(["ip", "netns", "exec", name, PY, "-c", CONNECT_MANY, str(n),
                            str(seconds)], capture_output=True, text=True, timeout=seconds + 30,
                           check=True)
        return int(p.stdout)

    def refusing(self, name: str, n: int, seconds: float) -> subprocess.Popen:
        """refuse() in the background: the loop's process, ended at
        cleanup if not before."""
        return self.python(name, CONNECT_MANY, args=(str(n), str(seconds)))

    def link(self, a: str, a_addr: str, b: str, b_addr: str) -> None:
        va, vb = f"v{uuid.uuid4().hex[:6]}", f"v{uuid.uuid4().hex[:6]}"
        # created inside `a`, so no end ever exists in the root namespace
        self.run(a, f"ip link add {va} type veth peer name {vb} netns {b}")
        self.run(a, f"ip addr add {a_addr} dev {va} && ip link set {va} up")
        self.run(b, f"ip addr add {b_addr} dev {vb} && ip link set {vb} up")

    def conntrack_expiry(self, pause: float = 3.0) -> dict:
        """Client -> router (VIP 10.96.0.10 on lo, DNAT + masquerade,
        conntrack established timeout 2 s, strict) -> echo server. The client
        (SO_KEEPALIVE, TCP_KEEPIDLE 60 / INTVL 7 / CNT 4) talks, idles
        `pause` s, and writes again: the router has forgotten the flow and
        resets it. Addresses repeat across tests: each set of namespaces is
        its own world. Returns names, the client port and its error."""
        cli, lb, srv = self.add("cli"), self.add("lb"), self.add("srv")
        self.link(cli, "10.77.1.2/24", lb, "10.77.1.1/24")
        self.link(lb, "10.77.2.1/24", srv, "10.77.2.2/24")
        self.run(cli, "ip route add default via 10.77.1.1")
        self.run(srv, "ip route add default via 10.77.2.1")
        self.run(lb, "ip addr add 10.96.0.10/32 dev lo && sysctl -qw net.ipv4.ip_forward=1")
        self.run(lb, "sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established=2 "
                     "net.netfilter.nf_conntrack_tcp_loose=0")
        subprocess.run(["ip", "netns", "exec", lb, "nft", "-f", "-"], input=ROUTER_NFT,
                       text=True, check=True)
        server = self.python(srv, ECHO_SERVER)
        assert server.stdout.readline().strip() == "ready"
        p = subprocess.run(["ip", "netns", "exec", cli, PY, "-c", IDLE_CLIENT, str(pause)],
                           capture_output=True, text=True, timeout=30, check=True)
        out = json.loads(p.stdout)
        return {"cli": cli, "lb": lb, "srv": srv, "port": out["port"], "err": out["err"]}

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
        for name in self.names:
            subprocess.run(["ip", "netns", "pids", name], capture_output=True)
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.fixture
def netns():
    n = Netns()
    try:
        yield n
    finally:
        n.cleanup()
