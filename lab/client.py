"""The lab's MySQL client "pod": runs inside the client namespace.

`python -m rsttrace.lab.client '<json spec>'` (started by the lab with
`ip netns exec`) uses PyMySQL with a small connection pool, does what the
scenario asks and prints one JSON object: every connection's own tuple and the
driver's error, verbatim. Every wait is bounded by the spec's numbers.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pymysql

from rsttrace.lab.mariadb import DATABASE, PASSWORD, USER

# linux/tcp.h: repair mode lets a privileged process read a live socket's
# sequence numbers (what CRIU does); the injected segment needs them to be
# accepted up to the point where conntrack judges its window.
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
TCP_REPAIR_ON, TCP_REPAIR_OFF_NO_WP = 1, -1


@dataclass
class ConnResult:
    lport: int | None = None
    laddr: str | None = None
    ok: bool = True
    error: str | None = None       # the driver's message, verbatim
    error_type: str | None = None
    t_connect: float | None = None
    t_last_recv: float | None = None  # end of the last successful query
    t_error: float | None = None
    keepalive: bool | None = None
    t_write: float | None = None      # when the last query was sent
    t_fin: float | None = None        # when the server's FIN was seen (the socket turned readable idle)
    evicted: bool = False             # closed by the pool for idling (max_idle_s)


@dataclass
class ClientReport:
    action: str
    conns: list[ConnResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    t_start: float = 0.0
    t_end: float = 0.0


def _err(c: ConnResult, e: BaseException) -> None:
    # PyMySQL wraps socket errors, e.g. OperationalError: (2013, 'Lost
    # connection to MySQL server during query ([Errno 104] Connection reset by
    # peer)'): this line is what an application would log.
    c.ok = False
    c.error = f"{type(e).__name__}: {e}"
    c.error_type = type(e).__name__
    c.t_error = time.time()


def _socket(host: str, port: int, timeout: float,
            ka: dict[str, int] | bool | None) -> socket.socket:
    """`ka`: a dict sets SO_KEEPALIVE and per-socket times; True sets only
    SO_KEEPALIVE (what most drivers and pools do), so the namespace's
    tcp_keepalive_time/intvl/probes decide; falsy turns it off."""
    s = socket.create_connection((host, port), timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if isinstance(ka, dict):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, ka["idle"])
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, ka["intvl"])
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, ka["cnt"])
    elif ka:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    else:
        # PyMySQL turns SO_KEEPALIVE on for sockets it opens; the "no
        # keepalive" client (most pools' default in other drivers) has it off.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
    return s


WATCH_STEP_S = 0.02


class Pool:
    """A minimal connection pool: connections wait idle between borrowings,
    which is exactly what lets a middlebox forget them. With `max_idle_s`
    it closes a connection idle that long in the background (Go's
    SetConnMaxIdleTime, HikariCP's idleTimeout) and opens a new one when
    borrowed."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.idle: list[tuple[pymysql.connections.Connection, ConnResult]] = []
        self.max_idle_s: float | None = spec.get("max_idle_s")

    def open(self, n: int) -> list[ConnResult]:
        out = []
        for _ in range(n):
            r = ConnResult(keepalive=bool(self.spec.get("keepalive")))
            try:
                s = _socket(self.spec["host"], self.spec["port"], self.spec.get("connect_timeout", 3),
                            self.spec.get("keepalive"))
                r.laddr, r.lport = s.getsockname()[:2]
                conn = pymysql.connections.Connection(
                    host=self.spec["host"], port=self.spec["port"], user=USER, password=PASSWORD,
                    database=DATABASE, defer_connect=True,
                    read_timeout=self.spec.get("read_timeout", 5),
                    write_timeout=self.spec.get("read_timeout", 5))
                conn.connect(s)
                r.t_connect = time.time()
                self.idle.append((conn, r))
            except Exception as e:  # noqa: BLE001 - reported verbatim
                _err(r, e)
            out.append(r)
        return out

    def query_all(self, sql: str = "SELECT 1") -> None:
        self.idle = [(conn, r) for conn, r in self.idle if self._query(conn, r, sql)]

    def _query(self, conn: pymysql.connections.Connection, r: ConnResult, sql: str = "SELECT 1") -> bool:
        try:
            r.t_write = time.time()
            with conn.cursor() as cur:
                cur.execute(sql)
                cur.fetchall()
            r.t_last_recv = time.time()
            return True
        except Exception as e:  # noqa: BLE001
            _err(r, e)
            return False

    def query_each_after(self, pauses: list[float]) -> None:
        """Connection i is used again `pauses[i]` s after its last query."""
        due = sorted(((r.t_last_recv or time.time()) + p, i) for i, ((_, r), p) in
                     enumerate(zip(self.idle, pauses)))
        failed = set()
        for t, i in due:
            self.wait_idle(max(0.0, t - time.time()))
            conn, r = self.idle[i]
            if not self._query(conn, r):
                failed.add(i)
        self.idle = [x for i, x in enumerate(self.idle) if i not in failed]

    def wait_idle(self, seconds: float) -> None:
        """Idle `seconds`, noting when a server's FIN arrives on an idle
        connection (its socket turns readable with nothing asked) and
        evicting connections idle past `max_idle_s`."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            watch = {conn._sock: r for conn, r in self.idle  # noqa: SLF001 - the driver's socket
                     if r.t_fin is None and conn._sock is not None}  # noqa: SLF001
            if watch:
                ready, _, _ = select.select(list(watch), [], [], min(left, WATCH_STEP_S))
                for sock in ready:
                    watch[sock].t_fin = time.time()
            else:
                time.sleep(min(left, WATCH_STEP_S))
            if self.max_idle_s is not None:
                self._evict(time.time())

    def _evict(self, now: float) -> None:
        keep = []
        for conn, r in self.idle:
            if now - (r.t_last_recv or now) >= self.max_idle_s:  # type: ignore[operator]
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - reported below if the server had gone
                    pass
                r.evicted = True
            else:
                keep.append((conn, r))
        self.idle = keep

    def refill(self, n: int) -> list[ConnResult]:
        """Open connections until `n` are idle (after evictions)."""
        return self.open(max(0, n - len(self.idle)))

    def close(self) -> None:
        for conn, _ in self.idle:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
        self.idle = []


def idle_pool(spec: dict[str, Any], rep: ClientReport) -> None:
    """Borrow, return, idle `pause_s`, borrow again: the pool's life."""
    pool = Pool(spec)
    n = spec.get("pool", 2)
    rep.conns = pool.open(n)
    pool.query_all()
    pool.wait_idle(spec["pause_s"])
    rep.conns += pool.refill(n)
    pool.query_all(spec.get("then_sql", "SELECT 1"))
    pool.close()


def idle_each(spec: dict[str, Any], rep: ClientReport) -> None:
    """One connection per entry of `pauses`, each used again after its own
    idle time (pools idle their connections unevenly)."""
    pool = Pool(spec)
    rep.conns = pool.open(len(spec["pauses"]))
    pool.query_all()
    pool.query_each_after(spec["pauses"])
    pool.close()


def connect_many(spec: dict[str, Any], rep: ClientReport) -> None:
    """A pool-less client: a new connection per request, all held open, each
    bounded by `connect_timeout`, the whole by `deadline_s`."""
    held = []
    deadline = time.monotonic() + spec.get("deadline_s", 30)
    for _ in range(spec["count"]):
        if time.monotonic() > deadline:
            rep.notes.append("deadline reached")
            break
        r = ConnResult(keepalive=True)
        try:
            conn = pymysql.connect(host=spec["host"], port=spec["port"], user=USER,
                                   password=PASSWORD, database=DATABASE,
                                   connect_timeout=spec.get("connect_timeout", 2))
            r.laddr, r.lport = conn._sock.getsockname()[:2]  # noqa: SLF001 - the tuple only
            r.t_connect = time.time()
            held.append(conn)
        except Exception as e:  # noqa: BLE001
            _err(r, e)
        rep.conns.append(r)
    time.sleep(spec.get("hold_s", 0))
    for conn in held:
        conn.close()


def connect_once(spec: dict[str, Any], rep: ClientReport) -> None:
    r = ConnResult(keepalive=True)
    try:
        conn = pymysql.connect(host=spec["host"], port=spec["port"], user=USER, password=PASSWORD,
                               database=DATABASE, connect_timeout=spec.get("connect_timeout", 2))
        r.laddr, r.lport = conn._sock.getsockname()[:2]  # noqa: SLF001 - the tuple only
        conn.close()
    except Exception as e:  # noqa: BLE001
        _err(r, e)
    rep.conns.append(r)


def _seqs(s: socket.socket) -> tuple[int, int]:
    """(snd_nxt, rcv_nxt) of an idle established socket, read in repair mode."""
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        snd = s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        rcv = s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
    finally:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
    return snd & 0xFFFFFFFF, rcv & 0xFFFFFFFF


def inject_invalid(spec: dict[str, Any], rep: ClientReport) -> None:
    """One pooled connection; a segment far outside the receiver's window is
    sent on its tuple (a stray retransmission from a reordered or rerouted
    path in real clusters); then the pool uses the connection again."""
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP
    from scapy.sendrecv import send
    from scapy.supersocket import L3RawSocket

    pool = Pool(spec)
    rep.conns = pool.open(1)
    pool.query_all()
    if not pool.idle:
        return
    conn, r = pool.idle[0]
    snd, rcv = _seqs(conn._sock)  # noqa: SLF001 - the socket the driver uses
    # The kernel routes it (no ARP of scapy's own inside the namespace).
    conf.L3socket = L3RawSocket
    seg = IP(src=r.laddr, dst=spec["host"]) / TCP(
        sport=r.lport, dport=spec["port"], flags="A",
        seq=(snd + spec.get("seq_offset", 1 << 30)) & 0xFFFFFFFF, ack=rcv, window=502)
    send(seg, verbose=False)
    rep.notes.append(f"injected seq={seg[TCP].seq} ack={rcv} (snd_nxt={snd})")
    time.sleep(spec.get("pause_s", 0.5))
    pool.query_all()
    pool.close()


ACTIONS = {"idle_pool": idle_pool, "idle_each": idle_each, "connect_many": connect_many,
           "connect_once": connect_once, "inject_invalid": inject_invalid}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m rsttrace.lab.client '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    rep = ClientReport(action=spec["action"], t_start=time.time())
    ACTIONS[spec["action"]](spec, rep)
    rep.t_end = time.time()
    print(json.dumps(asdict(rep)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
