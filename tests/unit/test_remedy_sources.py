from rsttrace.analysis.fixes import Fix, Where, keepalive_fixes
from rsttrace.remedy import keys as K
from rsttrace.remedy.model import Target
from rsttrace.remedy.netns import Located, self_target
from rsttrace.remedy.sources import Gathered, add_fixes, fixes_from_ctx, from_records

CLI = Target("name", "cli", 4026532999, "/run/netns/cli", "cli")


def _find(inode, name, cookie):
    return Located(CLI) if inode == CLI.inode else Located(None, f"namespace {name} is gone")


def test_analysis_fixes_become_proposals_and_handovers():
    node = self_target()
    g = Gathered()
    fixes = keepalive_fixes(Where(CLI.inode, "cli"), 7200, 900, "IPVS tcp timeout")
    fixes.append(Fix("conntrack_full", "node", None, None, K.CT_MAX, 262144, 524288, "", None, "full"))
    add_fixes(g, fixes, node, find=_find)
    props = {(p.target.label, p.key): p.value for p in g.proposals}
    assert props == {("cli", K.KEEPALIVE_TIME): 450, (node.label, K.CT_MAX): 524288}
    assert {h.scope for h in g.handovers} == {"pod", "pool"}


def test_gone_namespace_and_foreign_keys():
    g = Gathered()
    add_fixes(g, [Fix("keepalive", "netns", 123, None, K.KEEPALIVE_TIME, 7200, 60, "", None, "x"),
                  Fix("conntrack_invalid", "netns", CLI.inode, "cli", "nft.ct_state_invalid_drop",
                      None, "drop", "nft add rule ...", None, "y", True)],
              self_target(), find=_find)
    assert g.proposals == [] and "gone" in g.notes[0]
    assert g.handovers[0].scope == "command" and g.handovers[0].text == "nft add rule ..."


def test_config_audit_finding_is_turned_into_the_analysis_fix():
    ctx = {"kind": "ctx", "t": 1.0, "namespaces": [
        {"netns": CLI.inode, "name": "cli", "ct": None, "ipvs": None,
         "sysctl": {"tcp_keepalive_time": 7200, "nf_conntrack_tcp_timeout_established": 300}}]}
    fixes = fixes_from_ctx(ctx, None)
    ka = [f for f in fixes if f.key == K.KEEPALIVE_TIME]
    assert ka and ka[0].value == 150 and ka[0].netns == CLI.inode


def test_timeout_mismatch_from_config():
    ctx = {"namespaces": [{"netns": 1, "name": "init", "ct": None, "ipvs": {"tcp": 900},
                           "sysctl": {"tcp_keepalive_time": 300,
                                      "nf_conntrack_tcp_timeout_established": 600}}]}
    est = [f for f in fixes_from_ctx(ctx, None) if f.key == K.CT_ESTABLISHED]
    assert est[0].value == 900


def _pool_recording() -> tuple[dict, list[dict]]:
    """The lab's keepalive_pool shape: the node forgets idle flows after 6 s,
    the pool idles 8 s; its sockets have SO_KEEPALIVE on with no
    per-socket time, so the client namespace's 7200 s is their keepalive."""
    node_ns = 4026532247
    header = {"kind": "header", "schema": 1, "t": 100.0,
              "netns_names": {str(node_ns): "node", str(CLI.inode): "cli"}}
    ctx = {"kind": "ctx", "t": 100.0, "namespaces": [
        {"netns": node_ns, "name": "node", "ipvs": None, "ct": None,
         "sysctl": {"nf_conntrack_tcp_timeout_established": 6, "tcp_keepalive_time": 7200}},
        {"netns": CLI.inode, "name": "cli", "ipvs": None, "ct": None,
         "sysctl": {"nf_conntrack_tcp_timeout_established": 432000, "tcp_keepalive_time": 7200}}]}
    common = {"kind": "reset", "family": 4, "src": "10.96.0.10", "sport": 3306, "dst": "10.251.0.2",
              "dport": 40000, "reason_raw": None, "cookie": None, "syn": None,
              "ka_intvl_s": None, "ka_probes": None, "dev_netns": None, "pid": None, "comm": None,
              "cgroup": None}
    sent = {**common, "t": 108.1, "netns": node_ns, "dir": "sent", "state": "", "state_raw": 0,
            "reason": "NO_SOCKET", "has_sock": False, "trigger_flags": 24, "idle_ms": None,
            "keepalive": None, "ka_time_s": None, "ka_per_socket": None, "dev_netns": node_ns}
    recv = {**common, "t": 108.101, "netns": CLI.inode, "dir": "recv", "state": "ESTABLISHED",
            "state_raw": 1, "reason": None, "has_sock": True, "idle_ms": 8002, "trigger_flags": None,
            "keepalive": True, "ka_time_s": 7200, "ka_intvl_s": 75, "ka_probes": 9,
            "ka_per_socket": False}
    return header, [ctx, sent, recv, {**ctx, "t": 109.0}]


def test_keepalive_pool_reset_plans_the_client_namespace_keepalive():
    from rsttrace.remedy.planner import make_plan
    from test_remedy_fakes import FakeAccess

    header, records = _pool_recording()
    acc = FakeAccess()
    acc.add(CLI)
    g = from_records(records, header, acc.node, None, find=_find)
    assert g.causes.get("keepalive", 0) >= 1
    plan = make_plan([p for p in g.proposals if p.target.inode == CLI.inode], acc, acc.node)
    assert plan.ok, plan.errors
    # Below the node's 6 s with margin, and at least the kernel's 1 s minimum.
    assert [(c.target.label, c.key, c.old, c.new) for c in plan.changes] == [
        ("cli", K.KEEPALIVE_TIME, 7200, 3)]


def test_fix_from_a_recording_hands_over_one_value_per_pool_setting():
    """Two incidents in the client namespace (the node's timeout 6 s, then
    2 s) ask keepalive 3 and 1 and pool idle times 3 and 1: one proposal
    and one hand-over per setting, the strictest (before, both pool
    snippets were handed over)."""
    header, records = _pool_recording()
    ctx, sent, recv, _ = records
    node_ns = ctx["namespaces"][0]["netns"]
    ctx2 = {**ctx, "t": 200.0, "namespaces": [{**ctx["namespaces"][0], "sysctl": {
        "nf_conntrack_tcp_timeout_established": 2, "tcp_keepalive_time": 7200}}, ctx["namespaces"][1]]}
    later = [ctx2, {**sent, "t": 208.1, "dport": 40001}, {**recv, "t": 208.101, "dport": 40001, "idle_ms": 4000},
             {**ctx2, "t": 209.0}]
    g = from_records(records + later, header, self_target(), None, find=_find)
    assert g.causes == {"keepalive": 2} and node_ns
    ka = [p for p in g.proposals if p.key == K.KEEPALIVE_TIME]
    assert [(p.target.label, p.value) for p in ka] == [("cli", 1)]
    assert "one value for" in ka[0].reason
    go = [h for h in g.handovers if "SetConnMaxIdleTime" in h.text]
    assert [h.text for h in go] == ["db.SetConnMaxIdleTime(1 * time.Second)"]
