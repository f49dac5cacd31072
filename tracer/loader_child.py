"""The loader process: compiles and attaches the programs with bcc, hands
every file descriptor that keeps them alive to the parent over a Unix
socket, and exits.

Why a separate process: bcc carries LLVM, which leaves ~150 MB resident
after one compile. The attachments live as long as their descriptors, so
once the parent holds them the loader can go, and the long-running tracer
stays small (RSS is a target in bench/).

Run as `python -m rsttrace.tracer.loader_child FD` with a JSON request on
stdin: {"text", "cflags", "attach", "btf_ids", "abi", "kfuncs", "maps"}.

`python -m rsttrace.tracer.loader_child --layout` with {"text", "cflags",
"functions"} on stdin compiles only (bpf/layout.c: loads nothing) and
prints {"offsets": {function: the constant it returns}} or {"error"}.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> None:
    if sys.argv[1] == "--layout":
        req = json.load(sys.stdin)
        try:
            print(json.dumps({"offsets": layout_constants(req)}))
        except Exception as e:  # reported to the parent, which raises LoadError with it
            print(json.dumps({"error": str(e)[-4000:]}))
        return
    sock = socket.socket(fileno=int(sys.argv[1]))
    # bcc's import first: the parent is still probing and building
    try:
        import bcc  # noqa: F401
    except ImportError:
        pass  # compile_and_attach says what to do
    req = json.load(sys.stdin)
    from rsttrace.tracer.loader import LoadError
    try:
        meta, fds = load(req)
    except Exception as e:  # reported to the parent, which raises LoadError with it
        text = str(e) if isinstance(e, LoadError) else f"BPF program failed to load: {e}"
        msg = json.dumps({"error": text[-4000:]}).encode()
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

    from rsttrace.tracer.loader import compile_and_attach, program_fds
    b = compile_and_attach(req["text"], req["cflags"], req["attach"], req.get("btf_ids"),
                           req.get("abi"), req.get("kfuncs", []))
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
    for _prog, link in b.rsttrace_btf_tps:
        links.append(len(fds))
        fds.append(link)
    # the programs themselves, for the kernel's count of runs it skipped
    progs = []
    for fd in program_fds(b):
        progs.append(len(fds))
        fds.append(fd)
    leaf = b["layout_check"].Leaf
    layout = {"size": ctypes.sizeof(leaf),
              "fields": {n: getattr(leaf, n).offset for n, *_ in leaf._fields_}}
    if "pcring" in maps:
        layout["slot_size"] = ctypes.sizeof(b["pcring"].Leaf)
    return {"maps": maps, "links": links, "progs": progs, "layout": layout,
            "tracepoints": sorted([k.decode() if isinstance(k, bytes) else str(k)
                                   for k in [*b.tracepoint_fds, *b.raw_tracepoint_fds]]
                                  + [f"{k}:{t}" for k, t, _ in req["attach"] if k in ("tp_btf", "fexit")])}, fds


# BPF_ALU64 | BPF_MOV | BPF_K into r0, then BPF_JMP | BPF_EXIT: `return N;`
MOV64_IMM, EXIT = 0xb7, 0x95


def layout_constants(req: dict) -> dict[str, int]:
    """Compile bpf/layout.c and read, from each function's bytecode, the
    constant it returns (the compiler's offsetof of a header's member)."""
    from rsttrace.tracer.loader import LoadError, _quiet_stderr
    try:
        from bcc import BPF
    except ImportError:
        raise LoadError("bcc is not importable: run scripts/install.sh") from None
    with _quiet_stderr() as errlog:
        try:
            b = BPF(text=req["text"], cflags=req["cflags"])
        except Exception:
            errlog.seek(0)
            lines = errlog.read().decode(errors="replace").splitlines()
            why = [ln for ln in lines if "error:" in ln][:3] or lines[-3:]
            raise LoadError("the running kernel's headers did not compile: "
                            + " | ".join(w.strip() for w in why)) from None
    out = {}
    for fn in req["functions"]:
        code = b.dump_func(fn)
        value = returned_constant(code)
        if value is None:
            raise LoadError(f"{fn}: not a constant in the compiled headers ({code.hex()})")
        out[fn] = value
    return out


def returned_constant(code: bytes) -> int | None:
    """N of a program that is exactly `r0 = N; exit` (two 8-byte BPF
    instructions: opcode, registers dst:src in the low:high nibbles, a
    16-bit offset, a 32-bit immediate), else None."""
    if len(code) != 16 or code[0] != MOV64_IMM or code[1] & 0x0F != 0 or code[8] != EXIT:
        return None
    return int.from_bytes(code[4:8], "little", signed=True)


if __name__ == "__main__":
    main()
