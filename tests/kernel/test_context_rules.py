"""Firewall rules that answer with a reset, read where netfilter dropped a
packet: the context collector in a real namespace, and a real reject traced
and classified (firewall_reject naming the rule)."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from rsttrace.tracer.context import Collector

pytestmark = pytest.mark.kernel

REJECT_NFT = """
table inet guard {
  chain input {
    type filter hook input priority filter; policy accept;
    tcp dport 3306 counter reject with tcp reset
  }
}"""

CONNECT = textwrap.dedent("""
    import socket
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("10.78.0.2", 3306))
        print("connected")
    except OSError as e:
        print(type(e).__name__)
""")


def _nft(netns, name: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=script, text=True, check=True)


def test_rules_are_read_only_where_a_drop_was_noted(netns):
    ns = netns.add("fw")
    _nft(netns, ns, REJECT_NFT)
    netns.run(ns, "iptables -A INPUT -p tcp --dport 5432 -j REJECT --reject-with tcp-reset")
    ino = netns.inode(ns)
    col = Collector(only=[ino])
    try:
        (entry,) = col.snapshot()["namespaces"]
        assert "rules" not in entry                       # no drop seen there: nothing read
        assert col.note_drops([ino]) is True              # due: take a snapshot now
        (entry,) = col.snapshot()["namespaces"]
        rules = {(r["source"], r["table"], r["chain"]): r for r in entry["rules"]}
        nft = rules[("nft", "guard", "input")]
        assert nft["family"] == "inet" and nft["text"] == "tcp dport 3306 reject with tcp reset"
        assert isinstance(nft["handle"], int) and nft["packets"] == 0
        ipt = rules[("iptables", "filter", "INPUT")]
        assert ipt["text"] == "-A INPUT -p tcp -m tcp --dport 5432 -j REJECT --reject-with tcp-reset"
        assert col.note_drops([ino]) is False             # read just now: not again until the TTL
    finally:
        col.close()


def test_a_traced_reject_names_its_rule(netns, session, collect):
    """A connect to a port a rule rejects while a server could listen: the
    client's reset received, the drop of its SYN in the rule's namespace,
    the rule read after the drop; classified as firewall_reject."""
    from rsttrace.analysis.classify import Classifier

    cli, srv = netns.add("cli"), netns.add("srv")
    netns.link(cli, "10.78.0.1/24", srv, "10.78.0.2/24")
    _nft(netns, srv, REJECT_NFT)
    p = subprocess.run(["ip", "netns", "exec", cli, "python3", "-c", CONNECT], capture_output=True,
                       text=True, timeout=30)
    assert p.stdout.strip() == "ConnectionRefusedError"
    srv_ino, cli_ino = netns.inode(srv), netns.inode(cli)
    drops = collect.wait_for(lambda r: r["kind"] == "ct_drop" and r["netns"] == srv_ino)
    assert drops
    recv = collect.wait_for(lambda r: r["kind"] == "reset" and r["netns"] == cli_ino)
    assert recv and recv[0]["state"] == "SYN_SENT"
    # the session noted the drop when it read it; the next snapshot has the rule
    ctx = collect.session.snapshot()
    entry = next(n for n in ctx["namespaces"] if n["netns"] == srv_ino)
    assert [r["text"] for r in entry["rules"]] == ["tcp dport 3306 reject with tcp reset"]
    assert entry["rules"][0]["packets"] == 1
    collect.records += collect.session.poll(0.2)
    records = sorted((r for r in collect.records if r["kind"] == "ctx" or r.get("netns") in (srv_ino, cli_ino)),
                     key=lambda r: r["t"])
    c = Classifier(netns_names={srv_ino: srv, cli_ino: cli})
    verdicts = [v for r in records for v in c.feed(r)] + c.flush()
    (v,) = [v for v in verdicts if v.receiver_netns == cli_ino]
    assert v.cause == "firewall_reject", v.evidence
    assert f"netns {srv} ({srv_ino})" in v.evidence and "rule nft inet guard input handle" in v.evidence
    assert v.fixes[0].command.startswith(f"ip netns exec {srv} nft delete rule inet guard input handle ")
