"""Helpers (no tests): a pure in-memory stand-in for the node, for the planner
and applier unit tests; imported by the other test_remedy_* modules."""

from __future__ import annotations

import os

import pytest

from rsttrace.remedy import keys as K
from rsttrace.remedy.model import Target
from rsttrace.remedy.netns import AccessError, self_target

DEFAULTS = {K.KEEPALIVE_TIME: 7200, K.KEEPALIVE_INTVL: 75, K.KEEPALIVE_PROBES: 9,
            K.CT_ESTABLISHED: 432000, K.CT_BE_LIBERAL: 0}
NODE_ONLY = {K.CT_MAX: 262144, K.CT_BUCKETS: 262144}
IPVS = {K.IPVS_TCP: 900, K.IPVS_TCPFIN: 120, K.IPVS_UDP: 300}


# path -> cookie of the fake namespace a plain file stands for
COOKIES: dict[str, int] = {}


def file_target(tmp_path, name: str) -> Target:
    """A "named namespace" whose path is a plain file: its inode is the
    file's, its cookie the one COOKIES gives its path (see `files_as_namespaces`)."""
    p = tmp_path / name
    p.write_text("")
    COOKIES[str(p)] = cookie = 7_000_000 + len(COOKIES)
    return Target("name", name, os.stat(p).st_ino, str(p), name, cookie)


@pytest.fixture(autouse=True)
def files_as_namespaces(monkeypatch):
    """Imported by a test module: netnsid.identify() answers for plain files
    with their inode and their COOKIES entry (no cookie: None), as it would
    for a namespace; a test "replaces" a namespace by changing its cookie."""
    from rsttrace.tracer import netnsid
    real = netnsid.identify
    COOKIES.clear()

    def identify(path):
        if str(path).startswith("/proc/"):   # nsfs files look regular too
            return real(path)
        return os.stat(path).st_ino, COOKIES.get(str(path))
    monkeypatch.setattr(netnsid, "identify", identify)
    yield COOKIES
    COOKIES.clear()


class FakeAccess:
    def __init__(self, ipvs: bool = False, mem: int = 16 * 2**30):
        self.node = self_target()
        self.values: dict[int, dict[str, int]] = {}
        self.ipvs = ipvs
        self.mem = mem
        self.writes: list[tuple[str, str, int]] = []
        self.fail_on: set[tuple[str, int]] = set()     # (key, value) writes that fail
        self.skew: dict[tuple[str, int], int] = {}     # (key, value) write -> read-back offset
        self.on_write = None
        self.add(self.node)

    def add(self, t: Target, **over: int) -> Target:
        vals = dict(DEFAULTS)
        if t.inode == self.node.inode:
            vals.update(NODE_ONLY)
        if self.ipvs:
            vals.update(IPVS)
        vals.update({K.canonical(k): v for k, v in over.items()})
        self.values[t.inode] = vals
        return t

    def read(self, target, keys):
        return {k: self.values[target.inode].get(k) for k in keys}

    def write(self, target, key, value):
        if self.on_write:
            self.on_write(target, key, value)
        self.writes.append((target.label, key, value))
        if (key, value) in self.fail_on:
            raise AccessError(f"{target.label}: writing {key}={value} failed: Permission denied")
        self.values[target.inode][key] = value + self.skew.get((key, value), 0)
        return self.values[target.inode][key]

    def ipvs_available(self, target):
        return self.ipvs

    def mem_total(self):
        return self.mem

    def buckets_via(self):
        return "sysctl"
