"""The kernel matrix: what only runs on kernels with kprobes and IPVS.

Per kernel, one boot runs (1) tests/kernel/test_tracer_kernel.py, which on
6.1 attaches the kprobe fallbacks (its tcp_send_reset has no reason and
misses no-socket resets) and (2) the IPVS lab (lab/ipvs.py): idle expiry,
conntrack shorter than IPVS, keepalive below the IPVS timeout.
"""

from __future__ import annotations

import json
import re
import time

import pytest

pytestmark = pytest.mark.vm

KERNELS = ("5.10", "6.1", "6.12")
# Tracer kernel tests not run in a VM, and why: each is a test-side
# assumption about the host kernel or its speed, not a tracer fault.
TCG_SLOW = {
    "test_refused_btf_tracepoints_fall_back_to_raw": "compiles the programs once more (a minute under TCG); the host runs it",
    "test_accepted_sockets_name_their_pod": "compiles the programs once more (a minute under TCG); the host runs it",
    "test_owner_in_a_pod_cgroup_gets_its_pod": "compiles the programs once more (a minute under TCG); the host runs it",
    "test_fallbacks_record_the_same": "compiles the programs five times more (minutes under TCG); the host runs it",
    "test_full_percpu_ring_counts_lost": "compiles the programs once more (a minute under TCG); the host runs it",
    "test_attach_is_fast_and_plan_complete": "attach < 2 s is a host figure; TCG compiles in 30-45 s",
    "test_record_cli_ends_cleanly_on_sigterm": "waits 15 s for `record` to start; TCG needs ~40 s",
    "test_record_with_csv_writes_the_report": "waits 15 s for `record` to start; TCG needs ~40 s",
}
BEFORE_610 = {
    "test_connect_to_closed_port_no_socket": "asserts reason NO_SOCKET; tcp_send_reset has a reason from 6.10",
    "test_conntrack_expiry_reset_through_dnat_router": "asserts reason NO_SOCKET (6.10+ only)",
    "test_abort_with_linger_zero": "its reason guard matches the 6.1 plan text ('has no reason')",
}
DESELECT = {"5.10": {**TCG_SLOW, **BEFORE_610}, "6.1": {**TCG_SLOW, **BEFORE_610}, "6.12": TCG_SLOW}
GUEST_TIMEOUT_S = 900.0


def _guest_command(line: str) -> str:
    k = " and ".join(f"not {name}" for name in DESELECT[line])
    return ("echo '== tracer kernel tests'; "
            ".venv/bin/python -m pytest tests/kernel/test_tracer_kernel.py -q -rA -p no:cacheprovider "
            f"--tb=short -k '{k}' 2>&1 | grep -v 'macro redefined\\|note: previous\\|^#define\\|^ *\\^$'; "
            "echo \"== tracer rc ${PIPESTATUS[0]}\"; "
            "echo '== ipvs lab'; .venv/bin/python -m rsttrace.lab.ipvs --json; echo \"== ipvs rc $?\"")


@pytest.fixture(scope="module", params=KERNELS)
def guest(request):
    from rsttrace.lab import vm
    k = vm.kernel_for(request.param)
    t0 = time.monotonic()
    res = vm.run(k, _guest_command(k.line), timeout_s=GUEST_TIMEOUT_S)
    for why in res.boot_failures:
        print(f"\n[vm {k.release}] booted again: {why}")
    print(f"\n[vm {k.release}] boot-run-poweroff {time.monotonic() - t0:.0f} s")
    return k, res.output


def _results(output: str) -> dict:
    from rsttrace.lab.ipvs import RESULT_MARK
    line = next((ln for ln in output.splitlines() if ln.startswith(RESULT_MARK)), None)
    assert line, "the IPVS lab printed no result; output tail:\n" + output[-3000:]
    return json.loads(line[len(RESULT_MARK):])


def test_guest_runs_the_kernel_asked_for(guest):
    k, output = guest
    assert _results(output)["kernel"] == k.release


def test_tracer_kernel_tests_pass(guest):
    _k, output = guest
    passed = re.findall(r"^PASSED (\S+)", output, re.M)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    assert not failed, "\n".join(failed) + "\n" + output[-4000:]
    # layout check, fallback compile, TCP transitions, record errors (+ on
    # 6.12 the reset tests): a fixed floor so a silent collection loss fails
    assert len(passed) >= (4 if _k.line == "6.1" else 8), output[-4000:]
    assert re.search(r"^== tracer rc 0$", output, re.M)
    # the accepted-socket owner tests ran there (through the fexit, below)
    for name in ("test_socket_in_reused_memory_never_inherits_an_owner",
                 "test_never_accepted_socket_never_inherits_an_accepted_ones_owner",
                 "test_client_abort_reset_names_its_owner[btf]"):
        assert f"tests/kernel/test_tracer_kernel.py::{name}" in passed, name


def test_plan_uses_kprobes_where_the_kernel_needs_them(guest):
    k, output = guest
    res = _results(output)
    plan = res["plan"]
    assert plan["ipvs_expire"]["available"] and plan["ipvs_expire"]["hook"] == "kprobe ip_vs_conn_expire"
    assert "namespace found in the kernel's namespace list" in plan["ipvs_expire"]["why"], plan["ipvs_expire"]
    # both kernels load the tracepoint programs as BTF tracepoints; 6.12
    # reads tcp_sock and packet headers through bpf_rdonly_cast (6.2+)
    want = "BTF tracepoints" + ("" if k.line == "6.1" else " + bpf_rdonly_cast")
    assert res["hooks"] == want, res["hooks"]
    # accepted sockets' owners through an fexit on inet_csk_accept (4
    # arguments on 6.1, 2 on 6.12: the return value's place comes from BTF)
    assert plan["owner"]["hook"].endswith(" + fexit inet_csk_accept"), plan["owner"]
    # and events come through the per-CPU rings (compare-and-swap: 5.12+)
    assert res["transport"] == "percpu", res["transport"]
    if k.line == "6.1":
        # no reason, no no-socket resets in the 6.1 tracepoint: kprobes add them
        assert "kprobe tcp_v4_send_reset" in plan["reset_sent"]["hook"]
    else:
        assert plan["reset_sent"]["hook"] == "BTF tracepoint tcp:tcp_send_reset"


def _outcome(output: str, name: str) -> dict:
    return next(o for o in _results(output)["outcomes"] if o["scenario"] == name)


def test_ipvs_timeouts_netlink_equal_ipvsadm(guest):
    _k, output = guest
    for o in _results(output)["outcomes"]:
        assert o["ipvs_netlink"] is not None
        assert [o["ipvs_netlink"][x] for x in ("tcp", "tcpfin", "udp")] == o["ipvs_cli"], o


def test_ipvs_idle_expiry_is_keepalive_and_joins_the_expiry(guest):
    _k, output = guest
    o = _outcome(output, "ipvs_idle_expiry")
    assert o["client_errors"] and "104" in o["client_errors"][0]
    assert o["diagnosed"] == "keepalive", o
    assert "ipvs tcp timeout 3 s" in o["evidence"]
    assert o["ipvs_expire_events"] >= 1 and o["ipvs_joined"], o
    # Debian's BTF has no struct netns_ipvs: the program found the node's
    # namespace on the kernel's namespace list (offsets.ipvs_netns)
    assert o["ipvs_expire_netns"] == [o["node_netns"]], o


def test_keepalive_below_ipvs_timeout_no_reset(guest):
    _k, output = guest
    o = _outcome(output, "ipvs_keepalive_fixed")
    assert not o["client_errors"] and o["diagnosed"] == "none", o


def test_conntrack_shorter_than_ipvs_resets_the_client(guest):
    _k, output = guest
    o = _outcome(output, "ipvs_timeout_mismatch")
    assert o["client_errors"] and "104" in o["client_errors"][0], o


def test_conntrack_shorter_than_ipvs_is_timeout_mismatch(guest):
    _k, output = guest
    o = _outcome(output, "ipvs_timeout_mismatch")
    # The backend resets from its own address and the node rewrites it to
    # the VIP, so no sender pairs with the client's reset: the path is the
    # namespaces that NAT (ctx `nat`), and the node's tables decide.
    assert o["diagnosed"] == "timeout_mismatch", o
    assert "conntrack established timeout 2 s" in o["evidence"] and "ipvs tcp timeout 30 s" in o["evidence"], o
