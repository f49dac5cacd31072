"""A namespace is the one recorded only if its cookie says so: the kernel
gives a deleted namespace's inode to the next one made, and `ip netns add`
(or anyone) can bind that one under the old name. Real namespaces (rtk-*),
the journal and persisted files in a temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rsttrace.remedy import keys as K
from rsttrace.tracer import netnsid

pytestmark = pytest.mark.kernel

needs_cookies = pytest.mark.skipif(not netnsid.supported(),
                                   reason="this kernel has no SO_NETNS_COOKIE (before 5.14)")


# Holds every free namespace inode number below a wanted one, then frees
# only that one: allocation takes the lowest free number, so the next
# namespace made gets it. A UTS namespace costs one number and nothing else
# and lives while a descriptor to it is open.
HOLD_BELOW = textwrap.dedent("""
    import ctypes, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    want, deadline, held = int(sys.argv[1]), time.monotonic() + float(sys.argv[2]), []
    while time.monotonic() < deadline:
        assert libc.unshare(0x04000000) == 0, os.strerror(ctypes.get_errno())  # CLONE_NEWUTS
        held.append(os.open("/proc/self/ns/uts", os.O_RDONLY))
        if os.fstat(held[-1]).st_ino == want:
            break
        if len(held) % 64 == 0:
            time.sleep(0.02)   # the deleted namespace's cleanup runs later
    else:
        print("timeout", flush=True)
        sys.exit(0)
    assert libc.unshare(0x04000000) == 0     # leave it: it is freed when its fd closes
    os.close(held.pop())
    print("free", flush=True)
    sys.stdin.read()
""")


def take_inode(netns, inode: int, within_s: float = 20.0) -> str:
    """A new network namespace with the inode of one deleted: the kernel
    frees a namespace's inode once its deferred cleanup has run, and gives
    out the lowest free number to whatever is made next (a namespace of
    any kind, a /proc entry: each network namespace makes dozens)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_BELOW, str(inode), str(within_s)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if holder.stdout.readline().strip() != "free":
            pytest.skip(f"this kernel did not free inode {inode} within {within_s:g} s")
        name = f"{netns.tag}-re"
        subprocess.run(["ip", "netns", "add", name], check=True)
        netns.names.append(name)
    finally:
        holder.communicate("", timeout=30)
    assert netns.inode(name) == inode, "another namespace was made meanwhile"
    netns.run(name, "ip link set lo up")
    return name


def ns_read(ns: str, key: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", K.sysctl_path(key)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def ns_write(ns: str, key: str, value: int) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"], check=True)


def cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "rsttrace", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120,
                          stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)


@pytest.fixture
def bound():
    """Bind mounts made at /run/netns/NAME (an impostor under an old
    name), removed at the end."""
    made: list[str] = []

    def bind(src: str, name: str) -> None:
        dst = f"/run/netns/{name}"
        open(dst, "a").close()
        made.append(dst)
        subprocess.run(["mount", "--bind", f"/run/netns/{src}", dst], check=True)
    yield bind
    for dst in made:
        subprocess.run(["umount", dst], check=False)
        try:
            os.unlink(dst)
        except FileNotFoundError:
            pass


def recording(tmp_path, name: str, inode: int) -> str:
    """A recording of namespace `name` whose config asks for a keepalive
    fix (7200 s against a 300 s conntrack timeout): its context snapshot
    taken by the real collector."""
    from rsttrace.tracer.context import Collector
    ns_write(name, K.CT_ESTABLISHED, 300)
    col = Collector(only=[inode])
    try:
        ctx = col.snapshot()
    finally:
        col.close()
    assert [n["name"] for n in ctx["namespaces"]] == [name]
    rec = tmp_path / "r.jsonl"
    lines = [{"kind": "header", "schema": 1, "t": ctx["t"], "netns_names": {str(inode): name}},
             ctx, {"kind": "totals", "t": ctx["t"], "events": 0, "lost": 0, "by_kind": {}}]
    rec.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(rec)


@needs_cookies
def test_context_records_the_cookie_and_sees_a_reused_inode(netns):
    from rsttrace.tracer.context import Collector
    a = netns.add("a")
    ino = netns.inode(a)
    col = Collector(only=[ino])
    try:
        [first] = col.snapshot()["namespaces"]
        assert first["cookie"] == netnsid.identify(f"/run/netns/{a}")[1]
        [again] = col.snapshot()["namespaces"]
        assert again["cookie"] == first["cookie"]
        subprocess.run(["ip", "netns", "delete", a], check=True)
        b = take_inode(netns, ino)
        [now] = col.snapshot()["namespaces"]
        # the collector kept a's files and cookie; b has a's inode, not its cookie
        assert now["name"] == b and now["netns"] == ino
        assert now["cookie"] == netnsid.identify(f"/run/netns/{b}")[1] != first["cookie"]
    finally:
        col.close()


def test_fix_from_a_recording_plans_nothing_for_a_namespace_gone(netns, fix_env, tmp_path, bound):
    """The recorded namespace was deleted; a new one took its inode and was
    bound under its name: the plan names it gone and changes nothing."""
    a = netns.add("a")
    ino = netns.inode(a)
    rec = recording(tmp_path, a, ino)
    # the fix this recording asks for, while its namespace lives
    r = cli(["fix", "--dry-run", "--from", rec], fix_env)
    assert r.returncode == 0 and f"{a} " in r.stdout and "150" in r.stdout, r.stdout + r.stderr

    subprocess.run(["ip", "netns", "delete", a], check=True)
    b = take_inode(netns, ino)
    ns_write(b, K.CT_ESTABLISHED, 300)
    bound(b, a)   # an impostor: the old name, the old inode
    assert os.stat(f"/run/netns/{a}").st_ino == ino
    for args in (["--dry-run"], ["--yes"]):
        r = cli(["fix", *args, "--from", rec], fix_env)
        out = " ".join(r.stdout.split())
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Fix plan: 0 changes" in out, out
        assert f"namespace {a} (inode {ino}) no longer exists" in out, out
        assert ns_read(b, K.KEEPALIVE_TIME) == 7200
    assert not os.path.exists(fix_env["RSTTRACE_STATE_DIR"] + "/journal.json")


def test_rollback_leaves_a_namespace_that_took_the_inode_alone(netns, fix_env, bound):
    a = netns.add("a")
    ino = netns.inode(a)
    r = cli(["fix", "--yes", "--netns", a, "--set", f"{K.KEEPALIVE_TIME}=120"], fix_env)
    assert r.returncode == 0 and ns_read(a, K.KEEPALIVE_TIME) == 120, r.stdout + r.stderr
    subprocess.run(["ip", "netns", "delete", a], check=True)
    b = take_inode(netns, ino)
    ns_write(b, K.KEEPALIVE_TIME, 333)
    bound(b, a)
    r = cli(["fix", "--rollback"], fix_env)
    assert r.returncode == 1 and "no longer exists" in r.stderr, r.stdout + r.stderr
    assert ns_read(b, K.KEEPALIVE_TIME) == 333
    # the persisted file was the namespace's: restored (removed) all the same
    assert not os.path.exists(os.path.join(fix_env["RSTTRACE_ETC_DIR"], "netns.d", f"{a}.conf"))


@needs_cookies
def test_a_write_is_refused_from_inside_a_namespace_that_took_the_inode(netns):
    """The last check runs in the namespace entered: a target planned
    with a's cookie reaches b (same inode, same path) and is refused."""
    from rsttrace.remedy.model import Target
    from rsttrace.remedy.netns import NetnsError, SystemAccess
    a = netns.add("a")
    ino, cookie = netnsid.identify(f"/run/netns/{a}")
    subprocess.run(["ip", "netns", "delete", a], check=True)
    b = take_inode(netns, ino)
    stale = Target("name", b, ino, f"/run/netns/{b}", b, cookie)
    with pytest.raises(NetnsError, match="no longer the namespace planned"):
        SystemAccess().write(stale, K.KEEPALIVE_TIME, 100)
    assert ns_read(b, K.KEEPALIVE_TIME) == 7200


def test_reapply_reads_persisted_names_only_as_run_netns(netns, fix_env):
    """netns.d/1.conf and host.conf are namespaces named "1" and "host", not
    pid 1 or the node; init.conf is the node's own file."""
    a = netns.add("a")
    d = os.path.join(fix_env["RSTTRACE_ETC_DIR"], "netns.d")
    os.makedirs(d)
    for name in ("1", "host", "root", a):
        with open(os.path.join(d, f"{name}.conf"), "w") as f:
            f.write(f"{K.KEEPALIVE_PROBES} = 4\n")
    node_before = int(open("/proc/sys/net/ipv4/tcp_keepalive_probes").read())
    try:
        r = cli(["fix", "--reapply"], fix_env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert int(open("/proc/sys/net/ipv4/tcp_keepalive_probes").read()) == node_before
        assert ns_read(a, K.KEEPALIVE_PROBES) == 4
        for name in ("1", "host", "root"):
            assert f"no namespace /run/netns/{name} " in r.stderr, r.stderr
    finally:
        with open("/proc/sys/net/ipv4/tcp_keepalive_probes", "w") as f:
            f.write(str(node_before))
