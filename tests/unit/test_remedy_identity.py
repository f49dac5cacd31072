"""Which namespace a fix, a journal entry or a persisted file means, on
fake namespaces: plain files under a temporary /run/netns whose "cookie"
the test sets (test_remedy_fakes.files_as_namespaces)."""

from __future__ import annotations

import os

import pytest

from rsttrace.analysis.fixes import Fix, Where, invalid_fixes, keepalive_fixes, retarget
from rsttrace.remedy import keys as K
from rsttrace.remedy import netns, nsexec
from rsttrace.remedy.model import Target
from rsttrace.remedy.netns import NetnsError, SystemAccess, locate, self_target, still_same
from rsttrace.remedy.sources import Gathered, SeenNetns, add_fixes
from rsttrace.tracer import netnsid

from test_remedy_fakes import COOKIES, files_as_namespaces  # noqa: F401 (autouse)


@pytest.fixture
def run_netns(tmp_path, monkeypatch):
    d = tmp_path / "run-netns"
    d.mkdir()
    monkeypatch.setattr(netns, "RUN_NETNS", str(d))

    def make(name: str, cookie: int | None) -> int:
        p = d / name
        p.write_text("")
        if cookie is not None:
            COOKIES[str(p)] = cookie
        return os.stat(p).st_ino
    return make


def test_the_namespace_recorded_is_found_by_inode_and_cookie(run_netns):
    ino = run_netns("cli", 41)
    found = locate(ino, "cli", 41)
    assert found.target is not None and not found.weak
    assert (found.target.label, found.target.cookie, found.target.kind) == ("cli", 41, "name")


def test_a_namespace_that_took_the_inode_is_not_the_one_recorded(run_netns):
    """Deleted, and the next namespace made got its inode and its name."""
    ino = run_netns("cli", 42)
    found = locate(ino, "cli", 41)
    assert found.target is None
    assert found.why == (f"namespace cli (inode {ino}) no longer exists: its inode now "
                         "belongs to another namespace (cli)")


def test_no_path_with_the_inode_means_gone(run_netns):
    run_netns("other", 5)
    found = locate(1, "cli", 41)
    assert found.target is None and found.why == "namespace cli (inode 1) no longer exists"


def test_found_under_another_name_by_its_cookie(run_netns, tmp_path):
    ino = run_netns("new-name", 41)
    found = locate(ino, "cli", 41)
    assert found.target is not None and found.target.label == "new-name"


def test_without_a_cookie_inode_and_name_must_both_match(run_netns):
    ino = run_netns("cli", None)
    found = locate(ino, "cli", None)
    assert found.target is not None and found.weak and found.target.label == "cli"
    other = run_netns("impostor", None)
    found = locate(other, "cli", None)
    assert found.target is None and "impostor" in found.why and "both match" in found.why


def test_still_same_refuses_a_journaled_target_whose_cookie_changed(run_netns, tmp_path):
    ino = run_netns("cli", 41)
    t = Target("name", "cli", ino, str(tmp_path / "run-netns" / "cli"), "cli", 41)
    assert still_same(t) == t
    COOKIES[t.path] = 42     # deleted, a new one bound at the same path with the same inode
    with pytest.raises(NetnsError, match="no longer exists: its inode now belongs"):
        still_same(t)


def test_self_target_carries_this_namespace_cookie():
    me = self_target()
    assert me.cookie == netnsid.cookie_here()
    assert still_same(me) == me


def test_the_check_inside_the_namespace_refuses_another_cookie():
    here = netnsid.cookie_here()
    if here is None:
        pytest.skip("this kernel has no SO_NETNS_COOKIE (before 5.14)")
    reply = nsexec.handle({"op": "read", "keys": [K.KEEPALIVE_TIME], "cookie": here + 1})
    assert reply["moved"] and "values" not in reply
    assert "values" in nsexec.handle({"op": "read", "keys": [K.KEEPALIVE_TIME], "cookie": here})
    stale = Target("self", "", self_target().inode, "/proc/self/ns/net", "init", here + 1)
    with pytest.raises(NetnsError, match="no longer the namespace planned"):
        SystemAccess().read(stale, [K.KEEPALIVE_TIME])


def _ctx(*namespaces):
    return {"kind": "ctx", "t": 1.0, "namespaces": [
        {"netns": ino, "name": name, "cookie": cookie} for ino, name, cookie in namespaces]}


def test_an_inode_seen_with_two_cookies_is_not_planned(run_netns):
    ino = run_netns("cli", 2)
    seen = SeenNetns()
    seen.add_ctx(_ctx((ino, "cli", 1)))
    seen.add_ctx(_ctx((ino, "cli", 2)))
    g = Gathered()
    add_fixes(g, keepalive_fixes(Where(ino, "cli"), 7200, 900, "IPVS tcp timeout"),
              self_target(), seen)
    assert g.proposals == []
    assert g.notes == [f"net.ipv4.tcp_keepalive_time=450: inode {ino} was two namespaces "
                       "during the recording (one was deleted and the next took its inode); "
                       "which one cli is cannot be told; not planned"]


def test_the_headers_cookies_count_as_seen(run_netns):
    ino = run_netns("cli", 3)
    seen = SeenNetns()
    seen.add_header({"netns_cookies": {str(ino): 3, "x": 1, "5": "no"}})
    assert seen.cookies(ino) == {3} and seen.cookies(5) == set()
    g = Gathered()
    add_fixes(g, keepalive_fixes(Where(ino, "cli"), 7200, 900, "IPVS tcp timeout"),
              self_target(), seen)
    assert [p.target.cookie for p in g.proposals] == [3] and g.warnings == []
    seen.add_ctx(_ctx((ino, "cli", 4)))     # a later snapshot: another namespace
    g = Gathered()
    add_fixes(g, keepalive_fixes(Where(ino, "cli"), 7200, 900, "IPVS tcp timeout"),
              self_target(), seen)
    assert g.proposals == [] and "two namespaces" in g.notes[0]


def test_gone_namespace_gets_no_plan_and_no_command(run_netns):
    ino = run_netns("cli", 99)
    seen = SeenNetns()
    seen.add_ctx(_ctx((ino, "cli", 1)))
    g = Gathered()
    add_fixes(g, invalid_fixes(Where(ino, "cli"), 0) * 3, self_target(), seen)
    assert g.proposals == [] and g.handovers == []
    # said once, however many verdicts brought the fix
    assert len(g.notes) == 2 and all("no longer exists" in n for n in g.notes)


def test_weak_identity_is_said_in_the_plan(run_netns):
    ino = run_netns("cli", None)
    g = Gathered()
    add_fixes(g, keepalive_fixes(Where(ino, "cli"), 7200, 900, "IPVS tcp timeout"), self_target())
    assert [p.target.label for p in g.proposals] == ["cli"]
    assert len(g.warnings) == 1 and "identified by inode and name only" in g.warnings[0]


def test_command_and_plan_name_the_namespace_found(run_netns):
    """Recorded as pid:4242 (a process since gone); found as /run/netns/cli
    by its cookie: the handed-over command enters cli, not /proc/4242."""
    ino = run_netns("cli", 7)
    seen = SeenNetns()
    seen.add_ctx(_ctx((ino, "pid:4242", 7)))
    g = Gathered()
    fixes = invalid_fixes(Where(ino, "pid:4242"), 0) + \
        keepalive_fixes(Where(ino, "pid:4242"), 7200, 900, "IPVS tcp timeout")
    add_fixes(g, fixes, self_target(), seen)
    assert {p.target.label for p in g.proposals} == {"cli"}
    [cmd] = [h.text for h in g.handovers if h.scope == "command"]
    assert "/proc/4242" not in cmd and cmd.count("ip netns exec cli nft") == 3


def test_retarget_replaces_every_namespace_prefix():
    [_, nft] = invalid_fixes(Where(5, "old name"), 0)
    assert nft.command.count("ip netns exec 'old name' ") == 3
    moved = retarget(nft, "pid:77")
    assert moved.netns_name == "pid:77" and "old name" not in moved.command
    assert moved.command.count("nsenter --net=/proc/77/ns/net nft ") == 3
    plain = Fix("x", "netns", 5, "a", "k", None, 1, "", None, "r")
    assert retarget(plain, "b").command == "" and retarget(plain, "b").netns_name == "b"


def test_a_kernel_without_cookies_falls_back_to_inode_and_name(run_netns, monkeypatch):
    """Before 5.14 getsockopt(SO_NETNS_COOKIE) fails with ENOPROTOOPT: the
    cookie is None everywhere and the plan says identity is weaker."""
    import errno
    import socket as socket_mod

    class OldKernelSocket(socket_mod.socket):
        def getsockopt(self, *a):
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
    monkeypatch.setattr(netnsid.socket, "socket", OldKernelSocket)
    monkeypatch.setattr(netnsid, "_supported", None)
    assert netnsid.cookie_here() is None and not netnsid.supported()
    assert self_target().cookie is None
    ino = run_netns("cli", None)
    g = Gathered()
    add_fixes(g, keepalive_fixes(Where(ino, "cli"), 7200, 900, "IPVS tcp timeout"), self_target())
    assert [p.target.label for p in g.proposals] == ["cli"]
    assert g.warnings == ["namespace cli is identified by inode and name only (this kernel does "
                          "not report namespace cookies (before 5.14)): make sure it is the "
                          "namespace the resets happened in"]
