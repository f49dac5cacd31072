"""The kernel matrix: what only runs on kernels with kprobes and IPVS.

Per kernel, one boot runs, in one process (tests/vm/guest.py), (1)
tests/kernel/test_tracer_kernel.py, which on 5.10 and 6.1 attaches the
kprobe fallbacks (their tcp_send_reset has no reason and misses no-socket
resets) and on 5.10 derives netfilter drops from where kfree_skb freed the
packet (no drop reason before 5.17), and (2) the IPVS lab (lab/ipvs.py):
idle expiry, conntrack shorter than IPVS, keepalive below the IPVS timeout.
5.10 has no BTF for IPVS (module BTF came with 5.11): its layout comes from
the kernel's own headers there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time

import pytest


# RSTTRACE_VM_KERNELS="6.12" (as scripts/vm/provision.sh takes it) runs some only
KERNELS = tuple(os.environ.get("RSTTRACE_VM_KERNELS", "5.10 6.1 6.12").split())
# Tracer kernel tests not run in a VM, and why: each is a test-side
# assumption about the host kernel or its speed, not a tracer fault.
TCG_SLOW = {
    "test_refused_btf_tracepoints_fall_back_to_raw": "compiles the programs once more (a minute under TCG); the host runs it",
    "test_accepted_sockets_name_their_pod": "compiles the programs once more (a minute under TCG); the host runs it",
    "test_owner_in_a_pod_cgroup_gets_its_pod": "compiles the programs once more (a minute under TCG); the host runs it",
    "test_fallbacks_record_the_same": "compiles the programs five times more (minutes under TCG); the host runs it",
    "test_derived_netfilter_drops_are_the_kernels_own": "starts a second session (a minute under TCG); "
                                                        "5.10's own session derives, the host compares",
    "test_full_percpu_ring_counts_lost": "compiles the programs once more (a minute under TCG); the host runs it",
    "test_fallback_hooks_compile": "compiles the programs four times more (minutes under TCG) to check "
                                   "what the guests' sessions attach for real; the host runs it",
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
# One boot runs everything; 5.10 takes longest under TCG (the IPVS layout
# from the kernel's headers is a compile of its own in each process that
# starts a session; README: the tier's time per kernel)
GUEST_TIMEOUT_S = {"5.10": 2400.0, "6.1": 900.0, "6.12": 900.0}
# pytest-timeout's default (pyproject.toml) must not end a boot first
pytestmark = [pytest.mark.vm, pytest.mark.timeout(max(GUEST_TIMEOUT_S.values()) + 300)]


def _guest_command(line: str) -> str:
    return (".venv/bin/python tests/vm/guest.py " + shlex.join(sorted(DESELECT[line]))
            + " 2>&1 | grep --line-buffered -v 'macro redefined\\|note: previous\\|^#define\\|^ *\\^$'")


@pytest.fixture(scope="module", params=KERNELS)
def guest(request):
    from rsttrace.lab import vm
    k = vm.kernel_for(request.param)
    t0 = time.monotonic()
    res = vm.run(k, _guest_command(k.line), timeout_s=GUEST_TIMEOUT_S[k.line])
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


def _passed(output: str) -> list[str]:
    return re.findall(r"^PASSED (\S+)", output, re.M)


def test_tracer_kernel_tests_pass(guest):
    k, output = guest
    passed = _passed(output)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    assert not failed, "\n".join(failed) + "\n" + output[-4000:]
    # layout check, fallback compile, TCP transitions, record errors (+ on
    # 6.12 the reset tests): a fixed floor so a silent collection loss fails
    assert len(passed) >= (8 if k.line == "6.12" else 4), output[-4000:]
    assert re.search(r"^== tracer rc 0$", output, re.M)
    # the accepted-socket owner tests ran there (through the fexit, below)
    for name in ("test_socket_in_reused_memory_never_inherits_an_owner",
                 "test_never_accepted_socket_never_inherits_an_accepted_ones_owner",
                 "test_client_abort_reset_names_its_owner[btf]"):
        assert f"tests/kernel/test_tracer_kernel.py::{name}" in passed, name


def test_netfilter_drops_are_seen_with_their_reason_or_a_derived_one(guest):
    """An nftables drop is a ct_drop on every kernel (the tracer test checks
    the count, the namespace and the reason); before 5.17, whose kfree_skb
    has no reason, the plan derives it from where the packet was freed."""
    k, output = guest
    assert "tests/kernel/test_tracer_kernel.py::test_netfilter_drop_is_seen" in _passed(output)
    ct_drop = _results(output)["plan"]["ct_drop"]
    assert ct_drop["available"] and ct_drop["hook"].startswith("BTF tracepoint skb:kfree_skb"), ct_drop
    if k.line == "5.10":
        assert "before 5.17" in ct_drop["why"] and "nf_hook_slow" in ct_drop["why"], ct_drop
        assert "reason_derived" in ct_drop["why"], ct_drop
    else:
        assert "reason NETFILTER_DROP = " in ct_drop["why"], ct_drop


def test_plan_uses_kprobes_where_the_kernel_needs_them(guest):
    k, output = guest
    res = _results(output)
    plan = res["plan"]
    ipvs = plan["ipvs_expire"]
    assert ipvs["available"] and ipvs["hook"] == "kprobe ip_vs_conn_expire"
    if k.line == "5.10":
        # no module BTF before 5.11: the layout and the entry's namespace
        # from the kernel's own headers
        assert "from this kernel's own headers" in ipvs["why"], ipvs
        assert "namespace from the entry's struct netns_ipvs (headers)" in ipvs["why"], ipvs
    else:
        assert "from BTF (module ip_vs)" in ipvs["why"], ipvs
        assert "namespace found in the kernel's namespace list" in ipvs["why"], ipvs
    # every kernel loads the tracepoint programs as BTF tracepoints; 6.12
    # reads tcp_sock and packet headers through bpf_rdonly_cast (6.2+)
    want = "BTF tracepoints" + (" + bpf_rdonly_cast" if k.line == "6.12" else "")
    assert res["hooks"] == want, res["hooks"]
    # accepted sockets' owners through an fexit on inet_csk_accept (4
    # arguments on 5.10 and 6.1, 2 on 6.12: the return value's place comes
    # from BTF)
    assert plan["owner"]["hook"].endswith(" + fexit inet_csk_accept"), plan["owner"]
    # events come through the per-CPU rings where BPF has compare-and-swap
    # (5.12+), else the BPF ring buffer
    assert res["transport"] == ("ringbuf" if k.line == "5.10" else "percpu"), res["transport"]
    if k.line == "6.12":
        assert plan["reset_sent"]["hook"] == "BTF tracepoint tcp:tcp_send_reset"
    else:
        # no reason, no no-socket resets in the tracepoint before 6.10: kprobes add them
        assert "kprobe tcp_v4_send_reset" in plan["reset_sent"]["hook"]


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
    # namespace on the kernel's namespace list (offsets.ipvs_netns), or on
    # 5.10 through the entry's netns_ipvs as the kernel's headers lay it out
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
