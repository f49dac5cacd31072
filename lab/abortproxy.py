"""A database proxy in front of the lab's MariaDB (the `proxy_idle` and
`peer_reset` scenarios).

Runs in the backend namespace and relays bytes both ways. Like PgBouncer's
`client_idle_timeout`, it closes a client connection idle for IDLE_S
seconds with a plain close (a FIN): a pool that keeps the connection and
writes to it later meets the proxy's kernel, which answers from the closed
socket with a reset. A query containing KILL_MARKER is refused the way a
proxy's query rule can refuse one: the connection is aborted on the spot
with SO_LINGER 0, so the kernel sends a reset instead of a FIN.

`python -m rsttrace.lab.abortproxy LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT IDLE_S`
"""

from __future__ import annotations

import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

MAX_PAIRS = 256  # bounded: the lab opens a handful
KILL_MARKER = b"rsttrace_refused"


@dataclass
class Pair:
    client: socket.socket
    upstream: socket.socket
    last_client: float = field(default_factory=time.monotonic)


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def abort(s: socket.socket) -> None:
    # l_onoff=1, l_linger=0: close() discards the connection with a reset.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def serve(listen: tuple[str, int], upstream: tuple[str, int], idle_abort_s: float) -> None:
    sel = selectors.DefaultSelector()
    ls = socket.create_server(listen, reuse_port=False)
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ)
    pairs: dict[socket.socket, Pair] = {}
    while True:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            if s is ls:
                c, _ = ls.accept()
                if len(pairs) >= 2 * MAX_PAIRS:
                    abort(c)
                    continue
                u = socket.create_connection(upstream, 5)
                p = Pair(c, u)
                for x in (c, u):
                    pairs[x] = p
                    sel.register(x, selectors.EVENT_READ)
                continue
            p = pairs.get(s)  # type: ignore[arg-type]
            if p is None:
                continue
            data = b""
            try:
                data = s.recv(65536)  # type: ignore[union-attr]
            except OSError:
                pass
            if not data:
                _drop(sel, pairs, p, reset=False)
                continue
            if s is p.client:
                p.last_client = time.monotonic()
                if KILL_MARKER in data:
                    _drop(sel, pairs, p, reset=True)
                    continue
                p.upstream.sendall(data)
            else:
                p.client.sendall(data)
        now = time.monotonic()
        for p in {id(p): p for p in pairs.values()}.values():
            if now - p.last_client >= idle_abort_s:
                _drop(sel, pairs, p, reset=False)


def _drop(sel: selectors.BaseSelector, pairs: dict[socket.socket, Pair], p: Pair, reset: bool) -> None:
    for x in (p.client, p.upstream):
        if x in pairs:
            sel.unregister(x)
            del pairs[x]
    if reset:
        abort(p.client)
    else:
        p.client.close()
    p.upstream.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    serve(_addr(argv[0]), _addr(argv[1]), float(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
