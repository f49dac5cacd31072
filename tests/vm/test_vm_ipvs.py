"""IPVS timeouts written and read through rsttrace's netlink codec
(tracer/ipvsconfig.py) on a kernel that has IPVS, checked with ipvsadm.

One boot of Debian's 6.1 runs `guest()` below (this file as a script). In a
namespace of its own, a process started there does what the remedy engine
runs inside a namespace (remedy/nsexec.py: IPVS_CMD_SET_CONFIG, then the
read-back through IPVS_CMD_GET_CONFIG) for each timeout, and for one
alone, each time checked with `ipvsadm -Ln --timeout`; then the context
collector reads that namespace from a thread that entered it, and the root
namespace's timeouts must not have moved. (The remedy engine starts that
helper with nsenter for each value, a second or two here and, under
software emulation, more than its 30 s limit: the helper is run once,
directly.) The guest also prints the bytes the kernel answered, which
tests/unit/test_tracer_ipvs.py replays.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vm

KERNEL = "6.1"
MARK = "RSTTRACE-VM-IPVS "
NS = "rtvm-ipvs"
SET = {"tcp": 901, "tcpfin": 121, "udp": 301}
GUEST_TIMEOUT_S = 600.0


# ---- inside the guest --------------------------------------------------------

def _ipvsadm(ns: str | None = None) -> list[int]:
    """`ipvsadm -Ln --timeout`: 'Timeout (tcp tcpfin udp): 900 120 300'."""
    cmd = ["ipvsadm", "-Ln", "--timeout"]
    out = subprocess.run((["ip", "netns", "exec", ns] if ns else []) + cmd,
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"Timeout \(tcp tcpfin udp\): (\d+) (\d+) (\d+)", out)
    assert m, out
    return [int(x) for x in m.groups()]


def in_namespace() -> int:
    """Run inside NS: the remedy engine's helper, op by op."""
    from rsttrace.remedy.nsexec import handle
    from rsttrace.tracer.netnsid import cookie_here
    cookie = cookie_here()      # the helper checks it, as when the engine sends it
    out: dict = {"writes": [handle({"op": "write", "key": f"ipvs.{k}", "value": v, "cookie": cookie})
                            for k, v in SET.items()]}
    out["after"] = _ipvsadm()
    out["read"] = handle({"op": "read", "keys": [f"ipvs.{k}" for k in SET], "cookie": cookie})
    out["available"] = handle({"op": "ipvs_available"})
    out["one"] = handle({"op": "write", "key": "ipvs.udp", "value": 77})
    out["after_one"] = _ipvsadm()
    print(MARK + json.dumps(out), flush=True)
    return 0


def _captured() -> dict[str, str]:
    """The kernel's answers to GETFAMILY, GET_CONFIG and SET_CONFIG in the
    root namespace, as hex."""
    from rsttrace.tracer import ipvsconfig as C
    seen: list[bytes] = []
    make = C._socket

    class Recording:
        def __init__(self):
            self.sock = make()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.sock.close()

        def send(self, data):
            return self.sock.send(data)

        def recv(self, n):
            data = self.sock.recv(n)
            seen.append(data)
            return data

    C._socket = Recording
    C._family = None
    try:
        before = C.get_config()
        C.set_config({"tcp": before["tcp"]})
    finally:
        C._socket = make
    return {"family": seen[0].hex(), "get": seen[1].hex(), "set_ack": seen[2].hex(), "values": before}


def guest() -> int:
    from rsttrace.tracer.context import Collector
    out: dict = {"kernel": os.uname().release}
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        out["root_before"] = _ipvsadm()
        out["ns_before"] = _ipvsadm(NS)
        p = subprocess.run(["ip", "netns", "exec", NS, sys.executable, __file__, "in-namespace"],
                           capture_output=True, text=True)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith(MARK)), None)
        out["in_ns"] = json.loads(line[len(MARK):]) if line else {"failed": (p.stdout + p.stderr)[-2000:]}
        ino = os.stat(f"/run/netns/{NS}").st_ino
        col = Collector(only=[ino])
        try:
            snap = col.snapshot()
        finally:
            col.close()
        out["collector"] = next((n.get("ipvs") for n in snap["namespaces"] if n["netns"] == ino), None)
        out["ns_after"] = _ipvsadm(NS)
        out["root_after"] = _ipvsadm()
        out["captured"] = _captured()
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)
    print(MARK + json.dumps(out), flush=True)
    return 0


# ---- on the host -------------------------------------------------------------

@pytest.fixture(scope="module")
def result():
    from rsttrace.lab import vm
    k = vm.kernel_for(KERNEL)
    res = vm.run(k, f".venv/bin/python {os.path.relpath(__file__, vm.REPO)} guest",
                 timeout_s=GUEST_TIMEOUT_S)
    line = next((ln for ln in res.output.splitlines() if ln.startswith(MARK)), None)
    assert line, f"the guest printed no result (rc {res.returncode}):\n{res.output[-3000:]}"
    print(f"\n[vm {k.release}] ipvs set/read: {res.seconds:.0f} s")
    return json.loads(line[len(MARK):])


def test_set_in_a_namespace_is_what_ipvsadm_shows(result):
    assert result["ns_before"] == [900, 120, 300], result
    in_ns = result["in_ns"]
    assert "failed" not in in_ns, in_ns
    # each write read back through GET_CONFIG, then ipvsadm's view
    assert [w.get("readback") for w in in_ns["writes"]] == list(SET.values()), in_ns
    assert in_ns["after"] == list(SET.values()), in_ns
    assert in_ns["read"] == {"values": {f"ipvs.{k}": v for k, v in SET.items()}, "errors": {}}, in_ns
    assert in_ns["available"] == {"available": True}


def test_one_timeout_alone_leaves_the_others(result):
    in_ns = result["in_ns"]
    assert in_ns["one"] == {"readback": 77}, in_ns
    assert in_ns["after_one"] == [SET["tcp"], SET["tcpfin"], 77], in_ns


def test_timeouts_are_per_namespace(result):
    assert result["ns_after"] == [SET["tcp"], SET["tcpfin"], 77], result
    assert result["root_after"] == result["root_before"], result


def test_the_context_collector_reads_what_ipvsadm_shows(result):
    assert result["collector"] == {"tcp": SET["tcp"], "tcpfin": SET["tcpfin"], "udp": 77}, result


def test_captured_replies_decode(result):
    from rsttrace.tracer import ipvsconfig as C
    cap = result["captured"]
    fid = C.family_id(C.parse_replies(bytes.fromhex(cap["family"])))
    replies = C.parse_replies(bytes.fromhex(cap["get"]), fid)
    assert C.timeouts_of(replies) == cap["values"]
    ack = C.parse_replies(bytes.fromhex(cap["set_ack"]), fid)
    assert [m["header"]["type"] for m in ack] == [2] and ack[0]["error"] == 0


if __name__ == "__main__":
    sys.exit({"guest": guest, "in-namespace": in_namespace}[sys.argv[1]]())
