"""A netfilter drop carries its packet's flow (skb_flow in bpf/rsttrace.bpf.c),
and the classifier ties a reset to the drop of its own flow only.

Two throwaway namespaces joined by a veth: `a` (the client) and `b` (its
firewall). Real rules, real resets: `reject with tcp reset` in b's input
answers a's connect; a reset made in user space in b (as a box beyond the
node makes it, no TCP stack involved) comes at the moment b's output rules
drop packets of other flows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from rsttrace.analysis.classify import NAT_WINDOW_S, Classifier

pytestmark = pytest.mark.kernel

A4, B4, GONE4 = "10.78.1.1", "10.78.1.2", "10.78.9.9"   # GONE4: routed to b, owned by nobody
A6, B6 = "fd78::1", "fd78::2"
REJECT_PORT, DROP_PORT, UDP_PORT, USER_RST_PORT = 9001, 9002, 9003, 9005
SYN, ACK = 0x02, 0x10

FIREWALL = f"""
table inet fw {{
  chain in {{ type filter hook input priority filter; tcp dport {REJECT_PORT} reject with tcp reset; }}
  chain out {{ type filter hook output priority filter; tcp dport {DROP_PORT} drop; udp dport {UDP_PORT} drop; }}
}}"""

CONNECT = textwrap.dedent("""
    import json, socket, sys
    host, port = sys.argv[1], int(sys.argv[2])
    c = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    c.settimeout(5)
    try:
        c.connect((host, port))
        err = ""
    except OSError as e:
        err = repr(e)
    print(json.dumps({"port": c.getsockname()[1], "err": err}))
""")

# In b: wait for a's SYN to GONE4 (b's kernel forwards nothing and answers
# nothing: ip_forward 0), let b's output rules drop a TCP SYN and a UDP
# datagram of other flows, and at once answer the SYN with a reset made
# here (lab/gateway.py's), sent as a frame: no TCP stack sends it.
USER_RESET = textwrap.dedent("""
    import select, socket, sys, time
    from rsttrace.lab.gateway import ETH_P_IP, PACKET_OUTGOING, reset_for
    ifname, gone, a_addr, drop_port, udp_port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    s.bind((ifname, ETH_P_IP))
    print("ready", flush=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not select.select([s], [], [], 0.5)[0]:
            continue
        frame, addr = s.recvfrom(65535)
        ip = frame[14:]
        if addr[2] == PACKET_OUTGOING or ip[9] != socket.IPPROTO_TCP or ip[16:20] != socket.inet_aton(gone):
            continue
        ihl = (ip[0] & 15) * 4
        tcp = ip[ihl:]
        sport, dport = int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big")
        seq, ack = int.from_bytes(tcp[4:8], "big"), int.from_bytes(tcp[8:12], "big")
        other = socket.socket(); other.setblocking(False)
        try:
            other.connect((a_addr, drop_port))
        except OSError:
            pass
        try:        # dropped at output: the caller is told EPERM
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (a_addr, udp_port))
        except PermissionError:
            pass
        rst = reset_for(ip[12:16], ip[16:20], sport, dport, seq, ack, tcp[13], 0)
        s.send(frame[6:12] + frame[0:6] + frame[12:14] + rst)
        print(other.getsockname()[1], flush=True)
        break
""")


@pytest.fixture
def pair(netns):
    """(a, b, b's veth name): a reaches b on IPv4 and IPv6, and GONE4 through b."""
    a, b = netns.add("a"), netns.add("b")
    netns.link(a, f"{A4}/24", b, f"{B4}/24")
    ifb = netns.run(b, "ip -o link show type veth | cut -d: -f2 | cut -d@ -f1").stdout.strip()
    ifa = netns.run(a, "ip -o link show type veth | cut -d: -f2 | cut -d@ -f1").stdout.strip()
    netns.run(a, f"ip addr add {A6}/64 dev {ifa} nodad && ip route add {GONE4}/32 via {B4}")
    netns.run(b, f"ip addr add {B6}/64 dev {ifb} nodad && sysctl -qw net.ipv4.ip_forward=0")
    subprocess.run(["ip", "netns", "exec", b, "nft", "-f", "-"], input=FIREWALL, text=True, check=True)
    return a, b, ifb


def _connect(netns, ns: str, host: str, port: int) -> dict:
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, host, str(port)],
                       capture_output=True, text=True, timeout=20, check=True)
    return json.loads(p.stdout)


def _classify(records: list[dict]) -> list:
    c = Classifier()
    out = []
    for r in sorted(records, key=lambda r: r["t"]):
        out += c.feed(r)
    return out + c.flush()


@pytest.mark.parametrize("a_addr,b_addr,family", [(A4, B4, 4), (A6, B6, 6)], ids=["ipv4", "ipv6"])
def test_rejected_connect_is_tied_to_its_drop_by_flow(collect, netns, pair, a_addr, b_addr, family):
    """b's `reject with tcp reset` drops a's SYN and answers it: the drop
    carries the SYN's flow as b saw it, and the reset a receives is
    firewall_reject, tied by that flow."""
    a, b, _ = pair
    ino_a, ino_b = netns.inode(a), netns.inode(b)
    out = _connect(netns, a, b_addr, REJECT_PORT)
    assert "Connection refused" in out["err"], out
    port = out["port"]
    recs = collect.wait_for(lambda r: r["kind"] == "reset" and r["netns"] == ino_a and r["dport"] == port)
    drops = [r for r in collect.wait_for(lambda r: r["kind"] == "ct_drop" and r["netns"] == ino_b)
             if r.get("sport") == port]
    assert len(recs) == 1 and recs[0]["dir"] == "recv" and recs[0]["state"] == "SYN_SENT", recs
    assert len(drops) == 1, collect.records
    d = drops[0]
    assert (d["family"], d["ip_proto"], d["src"], d["sport"], d["dst"], d["dport"]) == \
        (family, 6, a_addr, port, b_addr, REJECT_PORT)
    assert d["tcp_flags"] & SYN and not d["tcp_flags"] & ACK, d
    assert d["protocol"] == (0x0800 if family == 4 else 0x86DD)
    # netfilter made the reset: no TCP stack sent one
    assert not [r for r in collect.records if r["kind"] == "reset" and r["dir"] == "sent"
                and r["netns"] in (ino_a, ino_b)]
    (v,) = _classify(recs + drops)
    assert (v.cause, v.confidence) == ("firewall_reject", "high"), v.evidence
    assert f"{a_addr}:{port} -> {b_addr}:{REJECT_PORT}" in v.evidence and "tied by time" not in v.evidence


def test_drop_of_another_flow_at_that_moment_is_no_reject(collect, netns, pair):
    """A reset no TCP stack sent (made in user space in b), while b's
    rules drop a SYN and a datagram of other flows at that moment: neither
    drop is the reset's, so it is no firewall_reject."""
    a, b, ifb = pair
    ino_a, ino_b = netns.inode(a), netns.inode(b)
    helper = netns.python(b, USER_RESET, args=(ifb, GONE4, A4, str(DROP_PORT), str(UDP_PORT)))
    assert helper.stdout.readline().strip() == "ready"
    out = _connect(netns, a, GONE4, USER_RST_PORT)
    line = helper.stdout.readline()
    assert line.strip().isdigit(), helper.communicate(timeout=15)
    other_port = int(line)
    assert "Connection refused" in out["err"], out
    port = out["port"]
    recs = collect.wait_for(lambda r: r["kind"] == "reset" and r["netns"] == ino_a and r["dport"] == port)
    drops = collect.wait_for(lambda r: r["kind"] == "ct_drop" and r["netns"] == ino_b, n=2)
    assert len(recs) == 1 and recs[0]["src"] == GONE4 and recs[0]["state"] == "SYN_SENT", recs
    tcp = [d for d in drops if d["ip_proto"] == 6]
    udp = [d for d in drops if d["ip_proto"] == 17]
    assert len(tcp) == 1 and len(udp) == 1, drops
    assert (tcp[0]["src"], tcp[0]["sport"], tcp[0]["dst"], tcp[0]["dport"]) == (B4, other_port, A4, DROP_PORT)
    assert (udp[0]["src"], udp[0]["dst"], udp[0]["sport"], udp[0]["tcp_flags"]) == (B4, A4, None, None)
    assert not [r for r in collect.records if r["kind"] == "reset" and r["dir"] == "sent"
                and r["netns"] in (ino_a, ino_b)]
    # the drops came at the reset's moment: without their flows (as recorded
    # before drops carried them) they would tie it by time
    assert all(abs(d["t"] - recs[0]["t"]) <= NAT_WINDOW_S for d in drops), (drops, recs)
    flowless = [{k: d[k] for k in ("kind", "t", "netns", "reason", "reason_raw", "protocol")} for d in drops]
    (old,) = _classify(recs + flowless)
    assert old.cause == "firewall_reject" and "tied by time" in old.evidence
    (v,) = _classify(recs + drops)
    assert v.cause == "no_listener", v.evidence
