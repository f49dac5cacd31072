"""Which network namespace: an identity the kernel never hands out twice.

A namespace's inode number (what /proc/PID/ns/net and /run/netns/NAME
show) is given back when the namespace is freed, and the next namespace
made takes the lowest free one: here a namespace created after another was
deleted had the deleted one's inode on the second try. So an inode in a
recording names "whichever namespace has this number now". The kernel also
numbers every namespace with a 64-bit cookie (`net->net_cookie`), counted
up and never reused while the host runs; since Linux 5.14 a socket reports
the cookie of the namespace it was made in (SO_NETNS_COOKIE). Reading it
takes a socket made inside the namespace: `cookie_here()` for the calling
thread's, `identify(path)` for another (a short-lived thread enters it with
setns(2), which moves only that thread). Kernels before 5.14 answer
ENOPROTOOPT: the cookie is None there and callers fall back to inode and
name, saying so.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading

# The value in include/uapi/asm-generic/socket.h (x86, arm64 and most
# others; alpha, mips, parisc and sparc number their socket options
# differently). Python's socket module does not name it.
SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_supported: bool | None = None


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace `fd` refers to."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def cookie_here() -> int | None:
    """The cookie of the calling thread's network namespace; None on a
    kernel without SO_NETNS_COOKIE (before 5.14)."""
    global _supported
    if _supported is False:
        return None
    # An AF_UNIX socket: every namespace has the family, and making one
    # touches no protocol state.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError as e:
        if e.errno != errno.ENOPROTOOPT:
            raise
        _supported = False
        return None
    finally:
        s.close()
    _supported = True
    return struct.unpack("=Q", raw)[0]


def supported() -> bool:
    """Whether this kernel reports namespace cookies."""
    if _supported is None:
        cookie_here()
    return bool(_supported)


def identify(path: str) -> tuple[int, int | None]:
    """(inode, cookie) of the namespace at `path` (/run/netns/NAME,
    /proc/PID/ns/net), both read through one descriptor, so they belong to
    the same namespace even if the path is re-bound meanwhile. OSError when
    the path cannot be opened or entered."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ino = os.fstat(fd).st_ino
        if not supported():
            return ino, None
        if ino == os.stat("/proc/thread-self/ns/net").st_ino:
            return ino, cookie_here()
        box: dict[str, object] = {}
        t = threading.Thread(target=_cookie_in, args=(fd, box), name="rsttrace-netns-id")
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return ino, box["cookie"]  # type: ignore[return-value]
    finally:
        os.close(fd)


def _cookie_in(fd: int, box: dict[str, object]) -> None:
    """Thread body: enter `fd`'s namespace, read its cookie, go back (the
    thread ends anyway; going back keeps it harmless if it did not)."""
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
            try:
                box["cookie"] = cookie_here()
            finally:
                setns(home)
        finally:
            os.close(home)
    except OSError as e:
        box["error"] = e
