"""Parsing the kernel's per-namespace counters (tracer/context.py), and
its /proc/sys files kept open per namespace."""

import os

import pytest

from rsttrace.tracer.context import parse_ct_stat, parse_sockstat

SOCKSTAT = """sockets: used 8
TCP: inuse 5 orphan 1 tw 2 alloc 9 mem 206
UDP: inuse 0 mem 0
"""


def test_sockstat_counts_tcp_in_use_and_time_wait():
    assert parse_sockstat(SOCKSTAT) == 7


def test_sockstat6_counts_tcp6_in_use():
    assert parse_sockstat("TCP6: inuse 3\nUDP6: inuse 1\n") == 3


def test_sockstat_without_tcp_line_is_zero():
    assert parse_sockstat("sockets: used 1\n") == 0
    assert parse_sockstat("") == 0


def test_ct_stat_sums_per_cpu_rows_by_header():
    text = ("entries  clashres  found  invalid  drop  early_drop  insert_failed\n"
            "00000003  00000001  00000000  0000000a  00000002  00000000  00000000\n"
            "00000003  00000002  00000000  00000001  00000000  00000001  00000000\n")
    st = parse_ct_stat(text)
    assert st["invalid"] == 11 and st["drop"] == 2 and st["early_drop"] == 1
    assert st["clash_resolve"] == 3


# /proc/sys files kept open per namespace (tracer/context._SysctlFiles);
# /proc/sys is readable without root.

KA = "net/ipv4/tcp_keepalive_time"


@pytest.fixture
def opens(monkeypatch):
    """Every os.open of a /proc/sys file, counted."""
    from rsttrace.tracer import context
    seen = []
    real = os.open

    def counting(path, *a, **kw):
        if str(path).startswith("/proc/sys/"):
            seen.append(path)
        return real(path, *a, **kw)
    monkeypatch.setattr(context.os, "open", counting)
    return seen


def test_sysctl_files_open_once_and_read_in_place(opens):
    from rsttrace.tracer.context import _SysctlFiles
    files = _SysctlFiles()
    want = int(open("/proc/sys/" + KA).read())
    try:
        assert [files.read_int(KA) for _ in range(3)] == [want] * 3
        assert opens == ["/proc/sys/" + KA] and len(files) == 1
    finally:
        files.close()
    assert len(files) == 0


def test_sysctl_files_not_kept_past_the_budget(opens):
    from rsttrace.tracer.context import _SysctlFiles
    files = _SysctlFiles(keep=False)
    assert files.read_int(KA) == files.read_int(KA) is not None
    assert len(opens) == 2 and len(files) == 0


def fail_next_read(monkeypatch) -> None:
    """The next read of a kept file fails as it does once its namespace is
    gone (ENOENT); later reads go through."""
    from rsttrace.tracer import context
    real = os.pread
    failures = [OSError(2, "No such file or directory")]

    def gone_once(fd, n, off):
        if failures:
            raise failures.pop()
        return real(fd, n, off)
    monkeypatch.setattr(context.os, "pread", gone_once)


def test_a_file_that_fails_to_read_is_opened_again(opens, monkeypatch):
    """What happens once the namespace it was opened in is gone (ENOENT)."""
    from rsttrace.tracer import context
    files = context._SysctlFiles()
    try:
        want = files.read_int(KA)
        fail_next_read(monkeypatch)
        assert files.read_int(KA) == want
        assert len(opens) == 2 and len(files) == 1
    finally:
        files.close()


def test_a_missing_file_is_looked_for_again_only_after_a_while(opens, monkeypatch):
    from rsttrace.tracer import context
    files = context._SysctlFiles()
    clock = [1000.0]
    monkeypatch.setattr(context.time, "monotonic", lambda: clock[0])
    assert files.read_int("net/ipv4/no_such_sysctl") is None
    assert files.read_int("net/ipv4/no_such_sysctl") is None
    assert len(opens) == 1
    clock[0] += context.ABSENT_TTL_S + 1
    assert files.read_int("net/ipv4/no_such_sysctl") is None
    assert len(opens) == 2 and len(files) == 0


@pytest.fixture
def cookies(monkeypatch):
    """Each read of the namespace cookie, answered from a counter."""
    from rsttrace.tracer import netnsid
    calls = []

    def fake():
        calls.append(1)
        return 1000 + len(calls)
    monkeypatch.setattr(netnsid, "cookie_here", fake)
    return calls


def test_cookie_read_once_while_kept_files_vouch_for_the_namespace(cookies):
    from rsttrace.tracer.context import _SysctlFiles
    files = _SysctlFiles()
    try:
        files.read_int(KA)
        assert files.cookie() == files.cookie() == 1001
        files.read_int(KA)
        assert files.cookie() == 1001 and len(cookies) == 1
    finally:
        files.close()


def test_cookie_read_again_once_a_kept_file_fails(cookies, monkeypatch):
    """A kept file that fails means its namespace is gone; a new one may
    have the same inode, so the cookie is read again."""
    from rsttrace.tracer import context
    files = context._SysctlFiles()
    try:
        files.read_int(KA)
        assert files.cookie() == 1001
        fail_next_read(monkeypatch)
        files.read_int(KA)
        assert files.cookie() == 1002
    finally:
        files.close()


def test_cookie_not_cached_without_kept_files(cookies):
    from rsttrace.tracer.context import _SysctlFiles
    files = _SysctlFiles(keep=False)
    files.read_int(KA)
    assert files.cookie() == 1001 and files.cookie() == 1002
    nothing_kept = _SysctlFiles()
    nothing_kept.read_int("net/ipv4/no_such_sysctl")
    assert nothing_kept.cookie() == 1003 and nothing_kept.cookie() == 1004


def test_cookie_of_this_namespace_is_stable_and_nonzero():
    from rsttrace.tracer import netnsid
    c = netnsid.cookie_here()
    if c is None:
        pytest.skip("this kernel has no SO_NETNS_COOKIE (before 5.14)")
    assert c > 0 and netnsid.cookie_here() == c
    assert netnsid.identify("/proc/self/ns/net") == (os.stat("/proc/self/ns/net").st_ino, c)


def test_names_from_the_file_system_are_utf8_text():
    from rsttrace.tracer.fsnames import mountinfo_path, text
    assert text("cli") == "cli" and text("café") == "café"
    raw = os.fsdecode(b"rt\xff")
    assert text(raw) == "rt\\xff"
    assert mountinfo_path(b"/run/netns/a\\040b\xff") == os.fsdecode(b"/run/netns/a b\xff")
