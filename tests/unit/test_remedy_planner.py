import pytest

from rsttrace.remedy import keys as K
from rsttrace.remedy.handover import add_handovers, kube_proxy_flags, pod_sysctls
from rsttrace.remedy.model import Proposal
from rsttrace.analysis.fixes import ordering_breaks
from rsttrace.remedy.planner import MEM_PER_ENTRY, NAMES, PlanOptions, make_plan

from test_analysis_fixes import ORDER_CASES
from test_remedy_fakes import FakeAccess, file_target, files_as_namespaces  # noqa: F401 (autouse)


@pytest.fixture
def acc():
    return FakeAccess()


def P(t, key, value, reason="r", manual=False):
    return Proposal(t, key, value, reason, "test", manual)


def test_merge_keeps_strongest_value_per_key_and_namespace(acc, tmp_path):
    cli = acc.add(file_target(tmp_path, "cli"))
    plan = make_plan([P(cli, K.KEEPALIVE_TIME, 600, "a"), P(cli, "tcp_keepalive_time", 120, "b"),
                      P(acc.node, K.CT_MAX, 300000, "c"), P(acc.node, K.CT_MAX, 524288, "d")],
                     acc, acc.node)
    assert plan.ok, plan.errors
    got = {(c.target.label, c.key): (c.old, c.new, c.reasons) for c in plan.changes}
    assert got[("cli", K.KEEPALIVE_TIME)] == (7200, 120, ["a", "b"])
    assert got[(acc.node.label, K.CT_MAX)][:2] == (262144, 524288)


def test_manual_value_wins_even_when_weaker(acc, tmp_path):
    cli = acc.add(file_target(tmp_path, "cli"), tcp_keepalive_time=60)
    plan = make_plan([P(cli, K.KEEPALIVE_TIME, 30), P(cli, K.KEEPALIVE_TIME, 300, manual=True)],
                     acc, acc.node)
    assert [(c.old, c.new) for c in plan.changes] == [(60, 300)]


def test_value_already_strong_enough_is_not_a_change(acc, tmp_path):
    cli = acc.add(file_target(tmp_path, "cli"), tcp_keepalive_time=60)
    plan = make_plan([P(cli, K.KEEPALIVE_TIME, 120)], acc, acc.node)
    assert plan.ok and plan.changes == []
    assert "already 60" in plan.skipped[0]


def test_global_key_goes_to_the_node_and_manual_netns_is_refused(acc, tmp_path):
    cli = acc.add(file_target(tmp_path, "cli"))
    plan = make_plan([P(cli, K.CT_MAX, 300000)], acc, acc.node)
    assert plan.changes[0].target == acc.node and plan.changes[0].scope == "global"
    plan = make_plan([P(cli, K.CT_MAX, 300000, manual=True)], acc, acc.node)
    assert not plan.ok and "whole node" in plan.errors[0]


def test_out_of_range_is_refused(acc, tmp_path):
    cli = acc.add(file_target(tmp_path, "cli"))
    plan = make_plan([P(cli, K.KEEPALIVE_TIME, 40000)], acc, acc.node)
    assert not plan.ok and "out of range 1..32767" in plan.errors[0]


def test_unknown_key_refused_when_manual_skipped_otherwise(acc):
    assert "does not change" in make_plan([P(acc.node, "net.core.somaxconn", 4096, manual=True)],
                                          acc, acc.node).errors[0]
    plan = make_plan([P(acc.node, "net.core.somaxconn", 4096)], acc, acc.node)
    assert plan.ok and not plan.changes and plan.skipped


def test_be_liberal_only_when_asked(acc, tmp_path):
    cli = acc.add(file_target(tmp_path, "cli"))
    plan = make_plan([P(cli, K.CT_BE_LIBERAL, 1)], acc, acc.node)
    assert plan.changes == [] and "--be-liberal" in plan.skipped[0]
    plan = make_plan([P(cli, K.CT_BE_LIBERAL, 1)], acc, acc.node,
                     PlanOptions(allow_explicit={K.CT_BE_LIBERAL}))
    assert [(c.key, c.new) for c in plan.changes] == [(K.CT_BE_LIBERAL, 1)]


@pytest.mark.parametrize("over, ask, needle", [
    ({}, {K.CT_ESTABLISHED: 600}, "tcp_keepalive_time 7200 >= nf_conntrack_tcp_timeout_established 600"),
    ({}, {K.IPVS_TCP: 1200, K.CT_ESTABLISHED: 1000}, "IPVS tcp timeout 1200 > nf_conntrack"),
    ({"tcp_keepalive_time": 100}, {K.IPVS_TCP: 100}, "tcp_keepalive_time 100 >= IPVS tcp timeout 100"),
])
def test_ordering_broken_after_the_change_is_refused(tmp_path, over, ask, needle):
    acc = FakeAccess(ipvs=True)
    ns = acc.add(file_target(tmp_path, "lb"), **over)
    plan = make_plan([P(ns, k, v, manual=True) for k, v in ask.items()], acc, acc.node)
    assert not plan.ok
    assert needle in plan.errors[0] and "keepalive < IPVS tcp timeout <= conntrack" in plan.errors[0]


@pytest.mark.parametrize("ka,ipvs,est,breaks", ORDER_CASES)
def test_planner_applies_the_rule(tmp_path, ka, ipvs, est, breaks):
    """The analysis's ordering rule, on the values a plan would leave."""
    acc = FakeAccess(ipvs=ipvs is not None)
    ns = acc.add(file_target(tmp_path, "lb"))
    after = {K.KEEPALIVE_TIME: ka, K.IPVS_TCP: ipvs, K.CT_ESTABLISHED: est}
    acc.values[ns.inode] = {k: v for k, v in after.items() if v is not None}
    key = next((k for k, v in after.items() if v is not None), None)
    if key is None:
        return
    acc.values[ns.inode][key] += 1      # the plan changes it back to the case's value
    plan = make_plan([P(ns, key, after[key], manual=True)], acc, acc.node)
    assert [(c.key, c.new) for c in plan.changes] == [(key, after[key])]
    assert plan.ok is (not breaks), plan.errors
    for lower, upper, _ in breaks:
        b = next(b for b in ordering_breaks(ka, ipvs, est) if (b.lower, b.upper) == (lower, upper))
        assert b.text(NAMES) in plan.errors[0]


def test_ordering_that_holds_is_accepted(tmp_path):
    acc = FakeAccess(ipvs=True)
    ns = acc.add(file_target(tmp_path, "lb"))
    plan = make_plan([P(ns, K.KEEPALIVE_TIME, 600), P(ns, K.IPVS_TCP, 3600),
                      P(ns, K.CT_ESTABLISHED, 3600)], acc, acc.node)
    assert plan.ok, plan.errors
    # conntrack's 432000 s already exceeds 3600: a longer timeout is left alone.
    assert sorted((c.key, c.new) for c in plan.changes) == [(K.IPVS_TCP, 3600), (K.KEEPALIVE_TIME, 600)]


def test_pod_keepalive_must_stay_below_the_nodes_timeouts(tmp_path):
    acc = FakeAccess(ipvs=True)
    pod = acc.add(file_target(tmp_path, "pod"))
    acc.values[acc.node.inode][K.IPVS_TCP] = 300
    plan = make_plan([P(pod, K.KEEPALIVE_TIME, 600, manual=True)], acc, acc.node)
    assert any("node's IPVS tcp timeout 300" in e for e in plan.errors)


def test_ipvs_absent_is_said(acc, tmp_path):
    lb = acc.add(file_target(tmp_path, "lb"))
    plan = make_plan([P(lb, K.IPVS_TCP, 3600)], acc, acc.node)
    assert plan.ok and not plan.changes and "IPVS is not in this kernel" in plan.skipped[0]
    assert "IPVS is not" in make_plan([P(lb, K.IPVS_TCP, 3600, manual=True)], acc, acc.node).errors[0]


def test_memory_bound_refuses_with_the_numbers():
    acc = FakeAccess(mem=8 * 2**30)
    plan = make_plan([P(acc.node, K.CT_MAX, 16_000_000)], acc, acc.node)
    assert not plan.ok
    msg = plan.errors[0]
    assert "16000000" in msg and f"{MEM_PER_ENTRY} B/entry" in msg and "8.0 GiB" in msg


def test_raising_max_brings_buckets_to_a_page_multiple_of_max_over_4():
    acc = FakeAccess()
    acc.values[acc.node.inode][K.CT_BUCKETS] = 65536
    plan = make_plan([P(acc.node, K.CT_MAX, 1_000_001)], acc, acc.node)
    b = next(c for c in plan.changes if c.key == K.CT_BUCKETS)
    assert b.new >= 1_000_001 / 4 and b.new % 512 == 0 and b.new - 1_000_001 / 4 < 512


def test_handovers_for_pods_and_kube_proxy(acc, tmp_path):
    cli = acc.add(file_target(tmp_path, "cli"))
    plan = make_plan([P(cli, K.KEEPALIVE_TIME, 120), P(acc.node, K.CT_MAX, 524288)], acc, acc.node)
    add_handovers(plan, cores=4)
    by = {h.scope: h.text for h in plan.handovers}
    assert 'name: net.ipv4.tcp_keepalive_time\n    value: "120"' in by["pod"]
    assert "--conntrack-max-per-core=131072" in by["kube-proxy"]


def test_snippet_builders():
    assert pod_sysctls({K.KEEPALIVE_INTVL: 30}) == (
        'securityContext:\n  sysctls:\n  - name: net.ipv4.tcp_keepalive_intvl\n    value: "30"')
    assert kube_proxy_flags({K.IPVS_TCP: 3600, K.CT_ESTABLISHED: 7200}, 2) == [
        "--ipvs-tcp-timeout=3600s", "--conntrack-tcp-timeout-established=7200s"]


def test_plan_text_fits_80_columns(acc, tmp_path):
    from rsttrace.remedy.render import plan_text
    cli = acc.add(file_target(tmp_path, "a-long-namespace-name"))
    plan = make_plan([P(cli, K.KEEPALIVE_TIME, 120, "why " * 40),
                      P(cli, K.CT_ESTABLISHED, 60, manual=True)], acc, acc.node)
    add_handovers(plan)
    text = plan_text(plan, "test")
    assert max(len(line) for line in text.splitlines()) <= 80
    assert K.CT_ESTABLISHED in text and "Refused, nothing was changed" in text


def test_plan_names_a_long_namespace_in_full(acc, tmp_path):
    """The WHERE column is 15 wide; a longer name is what a printed command
    and the user's `ip netns` use, so it is shown whole, never cut."""
    from rsttrace.remedy.render import plan_text
    name = "payments-db-clients-7f9c"
    cli = acc.add(file_target(tmp_path, name))
    text = plan_text(make_plan([P(cli, K.KEEPALIVE_TIME, 120, "x")], acc, acc.node))
    assert f"\n  {name}\n" in text
    assert max(len(line) for line in text.splitlines()) <= 80
