"""IPVS timeouts written and read through rsttrace's netlink codec
(tracer/ipvsconfig.py) on a kernel that has IPVS, checked with ipvsadm.

One boot of Debian's 6.1 runs `guest()` below (this file as a script):
`rsttrace fix --yes --netns NS --set ipvs.tcp=... ipvs.tcpfin=... ipvs.udp=...`
in a namespace of its own (the remedy engine's whole path: plan, journal,
IPVS_CMD_SET_CONFIG from inside the namespace, read-back), then
`ipvsadm -Ln --timeout` there and in the root namespace, the context
collector's reading of that namespace (IPVS_CMD_GET_CONFIG from a thread
that entered it), a SET of one timeout alone, and the rollbacks. It also
prints the bytes the kernel answered, which tests/unit/test_tracer_ipvs.py
replays.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.vm

KERNEL = "6.1"
MARK = "RSTTRACE-VM-IPVS "
NS = "rtvm-ipvs"
SET = {"tcp": 901, "tcpfin": 121, "udp": 301}
GUEST_TIMEOUT_S = 600.0


# ---- inside the guest --------------------------------------------------------

def _ipvsadm(ns: str | None) -> list[int]:
    """`ipvsadm -Ln --timeout`: 'Timeout (tcp tcpfin udp): 900 120 300'."""
    cmd = ["ipvsadm", "-Ln", "--timeout"]
    out = subprocess.run((["ip", "netns", "exec", ns] if ns else []) + cmd,
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"Timeout \(tcp tcpfin udp\): (\d+) (\d+) (\d+)", out)
    assert m, out
    return [int(x) for x in m.groups()]


def _fix(args: list[str], env: dict[str, str]) -> dict:
    p = subprocess.run([sys.executable, "-m", "rsttrace", "fix", *args], capture_output=True,
                       text=True, env=env, stdin=subprocess.DEVNULL)
    return {"rc": p.returncode, "out": (p.stdout + p.stderr)[-1500:]}


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
    from rsttrace.tracer.context import Collector, list_namespaces
    out: dict = {"kernel": os.uname().release}
    work = os.environ.get("RSTTRACE_VM_OUT", "/tmp")
    env = {**os.environ, "RSTTRACE_STATE_DIR": f"{work}/state", "RSTTRACE_SYSCTL_DIR": f"{work}/sysctl",
           "RSTTRACE_ETC_DIR": f"{work}/etc", "RSTTRACE_MODPROBE_DIR": f"{work}/modprobe",
           "RSTTRACE_SYSTEMD_DIR": f"{work}/systemd"}
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        out["root_before"] = _ipvsadm(None)
        out["ns_before"] = _ipvsadm(NS)
        # keepalive below the new IPVS timeout, or the planner refuses the order
        sets = [f"--set=ipvs.{k}={v}" for k, v in SET.items()] + ["--set=net.ipv4.tcp_keepalive_time=600"]
        t0 = time.monotonic()
        out["fix"] = _fix(["--yes", "--netns", NS, *sets], env)
        out["fix_s"] = round(time.monotonic() - t0, 1)
        out["ns_after"] = _ipvsadm(NS)
        out["root_after"] = _ipvsadm(None)
        ino = os.stat(f"/run/netns/{NS}").st_ino
        assert ino in list_namespaces()
        col = Collector(only=[ino])
        try:
            snap = col.snapshot()
        finally:
            col.close()
        out["collector"] = next((n.get("ipvs") for n in snap["namespaces"] if n["netns"] == ino), None)
        out["fix_one"] = _fix(["--yes", "--netns", NS, "--set=ipvs.udp=77"], env)
        out["ns_one"] = _ipvsadm(NS)
        # each rollback undoes one applied plan, the latest first
        out["rollback"] = [_fix(["--rollback"], env) for _ in range(2)]
        out["ns_rolled_back"] = _ipvsadm(NS)
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


def test_fix_sets_ipvs_timeouts_in_the_namespace_asked(result):
    assert result["ns_before"] == [900, 120, 300], result
    assert result["fix"]["rc"] == 0, result["fix"]
    assert result["ns_after"] == [SET["tcp"], SET["tcpfin"], SET["udp"]], result
    # IPVS timeouts are per namespace: the root's did not move
    assert result["root_after"] == result["root_before"], result


def test_the_context_collector_reads_what_ipvsadm_shows(result):
    assert result["collector"] == SET, result


def test_one_timeout_alone_leaves_the_others(result):
    assert result["fix_one"]["rc"] == 0, result["fix_one"]
    assert result["ns_one"] == [SET["tcp"], SET["tcpfin"], 77], result


def test_rollback_restores_the_timeouts(result):
    assert [r["rc"] for r in result["rollback"]] == [0, 0], result["rollback"]
    assert result["ns_rolled_back"] == [900, 120, 300], result


def test_captured_replies_decode(result):
    from rsttrace.tracer import ipvsconfig as C
    cap = result["captured"]
    fid = C.family_id(C.parse_replies(bytes.fromhex(cap["family"])))
    replies = C.parse_replies(bytes.fromhex(cap["get"]), fid)
    assert C.timeouts_of(replies) == cap["values"]
    ack = C.parse_replies(bytes.fromhex(cap["set_ack"]), fid)
    assert [m["header"]["type"] for m in ack] == [2] and ack[0]["error"] == 0


if __name__ == "__main__" and sys.argv[1:] == ["guest"]:
    sys.exit(guest())
