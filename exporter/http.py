"""A small, bounded HTTP server for /metrics and the health endpoints.

prometheus-client's own server (a ThreadingHTTPServer) gives every
connection a thread and waits on it without limit: 200 clients that send
half a request and nothing more hold 200 threads for as long as they like.
Here:
- at most `max_conns` connections are served at once, each in its own
  thread; one past that is closed at once (the accept loop never waits);
- a request must arrive whole (at most MAX_REQUEST bytes up to its blank
  line) within `timeout_s` of the connection, and its answer must be taken
  within the same time, else the connection is closed;
- GET and HEAD of the routes given, 404 for any other path, 405 for other
  methods; one request per connection (`Connection: close`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

# A Prometheus scrape or a probe sends a few hundred bytes of request.
MAX_REQUEST = 8192
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16

# a route's answer: (status, content type, body)
Response = tuple[int, str, bytes]
Route = Callable[[], Response]


def text(status: int, body: str) -> Response:
    return status, "text/plain; charset=utf-8", body.encode()


class HTTPServer:
    def __init__(self, addr: str, port: int, routes: dict[str, Route],
                 max_conns: int = MAX_CONNECTIONS, timeout_s: float = READ_TIMEOUT_S):
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self._sock = socket.create_server((addr, port), family=family, backlog=64)
        # accept() wakes up this often to see whether the server is stopping
        self._sock.settimeout(0.5)
        self.routes = dict(routes)
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(max_conns)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused = 0      # connections closed because every slot was taken
        self.errors = 0       # routes that raised (answered 500)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> "HTTPServer":
        self._thread = threading.Thread(target=self._serve, name="rsttrace-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)    # out of descriptors, say: try again, do not spin
                continue
            if not self._slots.acquire(blocking=False):
                self.refused += 1
                conn.close()
                continue
            threading.Thread(target=self._handle, args=(conn,), name="rsttrace-http-conn",
                             daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            req = self._read_request(conn, deadline)
            if req is None:
                return
            status, ctype, body, head = self._answer(req)
            out = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                   f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                   "Connection: close\r\n\r\n").encode() + (b"" if head else body)
            self._send(conn, out, deadline)
        except OSError:
            pass              # the client went away or was too slow
        finally:
            conn.close()
            self._slots.release()

    @staticmethod
    def _read_request(conn: socket.socket, deadline: float) -> bytes | None:
        """The request's first line, or None when it did not come whole
        in time (answered 408 or 431 where the client still listens)."""
        buf = b""
        while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                _try_send(conn, _plain(408, "request not received in time\n"))
                return None
            conn.settimeout(left)
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                _try_send(conn, _plain(408, "request not received in time\n"))
                return None
            if not chunk:
                return None
            buf += chunk
            if len(buf) > MAX_REQUEST:
                _try_send(conn, _plain(431, "request too large\n"))
                return None
        return buf.split(b"\n", 1)[0].rstrip(b"\r")

    def _answer(self, line: bytes) -> tuple[int, str, bytes, bool]:
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return (*text(400, "bad request\n"), False)
        method, target = parts[0], parts[1].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            return (*text(405, "only GET and HEAD\n"), False)
        path = target.split("?", 1)[0]
        route = self.routes.get(path)
        if route is None:
            return (*text(404, f"not found; served: {', '.join(sorted(self.routes))}\n"),
                    method == b"HEAD")
        try:
            status, ctype, body = route()
        except Exception as e:     # a route must not take the server down
            self.errors += 1
            status, ctype, body = text(500, f"error: {type(e).__name__}\n")
        return status, ctype, body, method == b"HEAD"

    @staticmethod
    def _send(conn: socket.socket, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            conn.settimeout(left)
            n = conn.send(view)
            view = view[n:]


def _plain(status: int, body: str) -> bytes:
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}").encode()


def _try_send(conn: socket.socket, data: bytes) -> None:
    try:
        conn.settimeout(0.5)
        conn.sendall(data)
    except OSError:
        pass
