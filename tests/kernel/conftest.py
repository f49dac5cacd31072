"""Kernel tier: real BPF on the running kernel, real namespaces, real resets.

One TraceSession per module (compiling takes about half a second); each test
makes its own throwaway namespaces (prefix rtk-) and removes them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

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

    def python(self, name: str, code: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", name, PY, "-c", code],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        return p

    def link(self, a: str, a_addr: str, b: str, b_addr: str) -> None:
        va, vb = f"v{uuid.uuid4().hex[:6]}", f"v{uuid.uuid4().hex[:6]}"
        # created inside `a`, so no end ever exists in the root namespace
        self.run(a, f"ip link add {va} type veth peer name {vb} netns {b}")
        self.run(a, f"ip addr add {a_addr} dev {va} && ip link set {va} up")
        self.run(b, f"ip addr add {b_addr} dev {vb} && ip link set {vb} up")

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
