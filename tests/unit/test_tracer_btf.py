"""The BTF reader on a hand-built blob (format from include/uapi/linux/btf.h)
and on the running kernel's BTF where it is readable."""

import os
import struct

import pytest

from rsttrace.tracer.btf import BTF, BTFError


def build_btf() -> bytes:
    strings = b"\0int\0outer\0a\0u\0x\0y\0colour\0RED\0BLUE\0arr\0"
    off = {s: strings.index(b"\0" + s.encode() + b"\0") + 1 for s in
           ("int", "outer", "a", "u", "x", "y", "colour", "RED", "BLUE", "arr")}
    types = b""
    # 1: int (4 bytes)
    types += struct.pack("<III", off["int"], 1 << 24, 4) + struct.pack("<I", 32)
    # 2: anonymous union { int x; int y; } size 4
    types += struct.pack("<III", 0, (5 << 24) | 2, 4)
    types += struct.pack("<III", off["x"], 1, 0) + struct.pack("<III", off["y"], 1, 0)
    # 3: struct outer { int a; union {x; y}; int arr[3]; } (offsets in bits)
    types += struct.pack("<III", off["outer"], (4 << 24) | 3, 20)
    types += struct.pack("<III", off["a"], 1, 0)
    types += struct.pack("<III", 0, 2, 32)
    types += struct.pack("<III", off["arr"], 5, 64)
    # 4: enum colour { RED = 3, BLUE = 7 }
    types += struct.pack("<III", off["colour"], (6 << 24) | 2, 4)
    types += struct.pack("<Ii", off["RED"], 3) + struct.pack("<Ii", off["BLUE"], 7)
    # 5: int[3]
    types += struct.pack("<III", 0, 3 << 24, 0) + struct.pack("<III", 1, 1, 3)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_members_nested_anonymous_and_enum():
    btf = BTF(build_btf())
    assert btf.field("outer", "a") == (0, 4)
    assert btf.field("outer", "y") == (4, 4)   # found through the anonymous union
    assert btf.field("outer", "arr") == (8, 12)
    assert btf.enum("colour") == {"RED": 3, "BLUE": 7}
    with pytest.raises(BTFError, match="no member"):
        btf.field("outer", "missing")
    with pytest.raises(BTFError, match="no type"):
        btf.field("nosuch", "a")


def test_bad_magic():
    with pytest.raises(BTFError, match="magic"):
        BTF(b"\0" * 64)


@pytest.mark.skipif(not os.access("/sys/kernel/btf/vmlinux", os.R_OK), reason="no readable kernel BTF")
def test_running_kernel_offsets_resolve():
    from rsttrace.tracer.btf import load_vmlinux
    from rsttrace.tracer.offsets import kernel_layout
    layout = kernel_layout(load_vmlinux())
    # every offset the program needs is found, and they are plausible
    assert layout.defines["OFF_NET_INUM"] > 0
    assert layout.defines["OFF_TP_RCV_TSTAMP"] > layout.defines["OFF_SK_NET"]
    assert 0 <= layout.defines["SOCK_KEEPOPEN_BIT"] < 64
