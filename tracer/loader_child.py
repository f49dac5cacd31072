"""The loader process: compiles and attaches the programs with bcc, hands
every file descriptor that keeps them alive to the parent over a Unix
socket, and exits.

Why a separate process: bcc carries LLVM, which leaves ~150 MB resident
after one compile. The attachments live as long as their descriptors, so
once the parent holds them the loader can go, and the long-running tracer
stays small (RSS is a target in bench/).

Run as `python -m rsttrace.tracer.loader_child FD` with a JSON request on
stdin: {"text", "cflags", "attach", "ports", "netns", "maps"}.
"""

from __future__ import annotations

import array
import json
import os
import socket
import sys


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    req = json.load(sys.stdin)
    try:
        meta, fds = load(req)
    except Exception as e:  # reported to the parent, which raises LoadError
        msg = json.dumps({"error": str(e)[-4000:]}).encode()
        sock.sendall(len(msg).to_bytes(4, "little") + msg)
        sock.close()
        os._exit(1)
    msg = json.dumps(meta).encode()
    socket.send_fds(sock, [len(msg).to_bytes(4, "little") + msg], fds)
    sock.close()
    # os._exit: no atexit cleanup by bcc, which would detach what the parent now holds
    os._exit(0)


def load(req: dict) -> tuple[dict, list[int]]:
    import ctypes
    import tempfile

    from bcc import BPF
    # clang warnings from the foreign headers go to a file, shown on failure only
    err = tempfile.TemporaryFile()
    saved = os.dup(2)
    os.dup2(err.fileno(), 2)
    try:
        b = BPF(text=req["text"], cflags=req["cflags"])
    except Exception as e:
        os.dup2(saved, 2)
        err.seek(0)
        raise RuntimeError(f"{e}\n{err.read().decode(errors='replace')[-3000:]}") from None
    os.dup2(saved, 2)
    for name, values in (("port_filter", req.get("ports")), ("netns_filter", req.get("netns"))):
        if values:
            t = b[name]
            for v in values:
                t[t.Key(v)] = t.Leaf(1)
    for kind, target, fn in req["attach"]:
        if kind == "kprobe":
            b.attach_kprobe(event=target, fn_name=fn)
        else:
            b.attach_kretprobe(event=target, fn_name=fn)
    fds: list[int] = []
    maps = {}
    for name in req["maps"]:
        try:
            t = b[name]
        except KeyError:
            continue
        maps[name] = len(fds)
        fds.append(t.map_fd)
    links = []
    for tp_fd in [*b.tracepoint_fds.values(), *b.raw_tracepoint_fds.values()]:
        links.append(len(fds))
        fds.append(tp_fd)
    for by_fn in list(b.kprobe_fds.values()):  # event -> {function: fd}
        for fd in by_fn.values():
            links.append(len(fds))
            fds.append(fd)
    leaf = b["layout_check"].Leaf
    layout = {"size": ctypes.sizeof(leaf),
              "fields": {n: getattr(leaf, n).offset for n, *_ in leaf._fields_}}
    return {"maps": maps, "links": links, "layout": layout,
            "tracepoints": sorted(k.decode() if isinstance(k, bytes) else str(k)
                                  for k in [*b.tracepoint_fds, *b.raw_tracepoint_fds])}, fds


if __name__ == "__main__":
    main()
