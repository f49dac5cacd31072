"""A gateway beyond the node that forgets idle flows (the `gateway_idle` scenario).

Runs in its own namespace between the node and a second address of the
backend, like a cloud NAT gateway or network load balancer in front of a
database: it forwards IPv4 TCP between its two interfaces in user space
and remembers each flow's last packet. A flow idle `--idle` seconds is
forgotten; the next packet of it (anything but a SYN) is dropped and
answered with a reset made here, from the packet's destination, as such a
box does. The kernel of this namespace forwards nothing (ip_forward 0,
which also keeps it from answering with ICMP), and no TCP stack makes the
reset: to a tracer on the node it is a reset from a remote peer, seen only
where the client receives it.

`python -m rsttrace.lab.gateway --idle S --max-s S IF=NEXTHOP_MAC IF=NEXTHOP_MAC`
(two interfaces; frames from one go out of the other to its next hop).
"""

from __future__ import annotations

import argparse
import select
import socket
import struct
import sys
import time
from collections import OrderedDict

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4      # linux/if_packet.h: a frame this host sent
MAX_FLOWS = 4096         # bounded: the lab opens a handful
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_packet(src: bytes, dst: bytes, tcp: bytes, ttl: int = 64, ident: int = 0) -> bytes:
    """An IPv4 header (no options) and `tcp`, both checksums computed
    (frames read from a veth may carry a checksum left for the hardware)."""
    tcp = tcp[:16] + b"\0\0" + tcp[18:]
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0x4000, ttl,
                       socket.IPPROTO_TCP, 0, src, dst)
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + tcp


def reset_for(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
              payload: int) -> bytes:
    """The reset answering a segment src:sport -> dst:dport (RFC 793): with
    the ACK it carried as its sequence number, else RST|ACK of what it
    occupied."""
    if flags & TCP_ACK:
        rseq, rack, rflags = ack, 0, TCP_RST
    else:
        occupied = payload + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
        rseq, rack, rflags = 0, (seq + occupied) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    tcp = struct.pack("!HHIIBBHHH", dport, sport, rseq, rack, 5 << 4, rflags, 0, 0, 0)
    return ip_packet(dst, src, tcp)


class Gateway:
    def __init__(self, ports: list[tuple[str, bytes]], idle_s: float):
        self.idle_s = idle_s
        self.socks: list[socket.socket] = []
        self.macs: list[bytes] = []
        self.next_hop: list[bytes] = []
        for ifname, mac in ports:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            s.bind((ifname, ETH_P_IP))
            self.socks.append(s)
            self.macs.append(s.getsockname()[4])
            self.next_hop.append(mac)
        self.flows: OrderedDict[tuple, float] = OrderedDict()
        self.resets = 0

    def serve(self, max_s: float) -> None:
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select(self.socks, [], [], 0.5)
            for s in ready:
                frame, addr = s.recvfrom(65535)
                if addr[2] != PACKET_OUTGOING:
                    self._frame(self.socks.index(s), frame)

    def _frame(self, side: int, frame: bytes) -> None:
        ip = frame[14:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
            return
        ihl = (ip[0] & 0x0F) * 4
        ip = ip[:struct.unpack("!H", ip[2:4])[0]]
        src, dst, ttl = ip[12:16], ip[16:20], ip[8]
        tcp = ip[ihl:]
        if len(tcp) < 20 or ttl <= 1:
            return
        sport, dport, seq, ack = struct.unpack("!HHII", tcp[:12])
        flags = tcp[13]
        payload = len(tcp) - (tcp[12] >> 4) * 4
        key = tuple(sorted(((src, sport), (dst, dport))))
        now = time.monotonic()
        seen = self.flows.get(key)
        if seen is not None and now - seen >= self.idle_s:
            del self.flows[key]          # idle too long: forgotten
            seen = None
        if seen is None and not (flags & TCP_SYN and not flags & TCP_ACK):
            if not flags & TCP_RST:
                # a flow it does not know: reset the sender, drop the packet
                self._send(side, frame[6:12], reset_for(src, dst, sport, dport, seq, ack, flags, payload))
                self.resets += 1
            return
        self.flows[key] = now
        self.flows.move_to_end(key)
        if flags & TCP_RST:
            del self.flows[key]
        while len(self.flows) > MAX_FLOWS:
            self.flows.popitem(last=False)
        out = 1 - side
        self._send(out, self.next_hop[out], ip_packet(src, dst, tcp, ttl - 1,
                                                      struct.unpack("!H", ip[4:6])[0]))

    def _send(self, side: int, dst_mac: bytes, packet: bytes) -> None:
        try:
            self.socks[side].send(dst_mac + self.macs[side] + struct.pack("!H", ETH_P_IP) + packet)
        except OSError:
            pass     # too large for the link (an offloaded super-frame): dropped, as a box would


def _port(text: str) -> tuple[str, bytes]:
    ifname, _, mac = text.partition("=")
    return ifname, bytes.fromhex(mac.replace(":", ""))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rsttrace.lab.gateway")
    p.add_argument("--idle", type=float, required=True, help="seconds of silence after which a flow is forgotten")
    p.add_argument("--max-s", type=float, default=3600.0, help="exit after this long (the lab stops it first)")
    p.add_argument("ports", nargs=2, type=_port, metavar="IF=NEXTHOP_MAC")
    args = p.parse_args(argv)
    Gateway(args.ports, args.idle).serve(args.max_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
