from rsttrace.analysis.fixes import Fix, Where, keepalive_fixes
from rsttrace.remedy import keys as K
from rsttrace.remedy.model import Target
from rsttrace.remedy.netns import self_target
from rsttrace.remedy.sources import Gathered, add_fixes, fixes_from_ctx

CLI = Target("name", "cli", 4026532999, "/run/netns/cli", "cli")


def _find(inode, name):
    return CLI if inode == CLI.inode else None


def test_analysis_fixes_become_proposals_and_handovers():
    node = self_target()
    g = Gathered()
    fixes = keepalive_fixes(Where(CLI.inode, "cli"), 7200, 900, "IPVS tcp timeout")
    fixes.append(Fix("conntrack_full", "node", None, None, K.CT_MAX, 262144, 524288, "", None, "full"))
    add_fixes(g, fixes, node, _find)
    props = {(p.target.label, p.key): p.value for p in g.proposals}
    assert props == {("cli", K.KEEPALIVE_TIME): 450, (node.label, K.CT_MAX): 524288}
    assert {h.scope for h in g.handovers} == {"pod", "pool"}


def test_gone_namespace_and_foreign_keys():
    g = Gathered()
    add_fixes(g, [Fix("keepalive", "netns", 123, None, K.KEEPALIVE_TIME, 7200, 60, "", None, "x"),
                  Fix("conntrack_invalid", "netns", CLI.inode, "cli", "nft.ct_state_invalid_drop",
                      None, "drop", "nft add rule ...", None, "y", True)],
              self_target(), _find)
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
