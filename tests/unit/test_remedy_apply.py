import json

import pytest

from rsttrace.remedy import keys as K
from rsttrace.remedy.apply import ApplyError, apply_plan, load_journal, rollback_last
from rsttrace.remedy.model import Proposal
from rsttrace.remedy.paths import Paths
from rsttrace.remedy.planner import make_plan

from test_remedy_fakes import FakeAccess, file_target


@pytest.fixture
def paths(tmp_path):
    root = tmp_path / "root"
    return Paths.from_env({f"RSTTRACE_{k}_DIR": str(root / k.lower())
                           for k in ("STATE", "SYSCTL", "ETC", "MODPROBE", "SYSTEMD")})


def _plan(acc, tmp_path):
    cli = acc.add(file_target(tmp_path, "cli"))
    props = [Proposal(cli, K.KEEPALIVE_TIME, 120, "idle 900 s", "keepalive"),
             Proposal(cli, K.KEEPALIVE_INTVL, 30, "faster probes", "keepalive"),
             Proposal(acc.node, K.CT_MAX, 524288, "table full", "conntrack_full")]
    plan = make_plan(props, acc, acc.node)
    assert plan.ok and len(plan.changes) == 3
    return plan, cli


def test_apply_writes_journal_first_then_values_then_files(tmp_path, paths):
    acc = FakeAccess()
    plan, cli = _plan(acc, tmp_path)
    seen = []
    acc.on_write = lambda t, k, v: seen.append(paths.journal.exists())
    out = apply_plan(plan, acc, paths)
    assert seen and all(seen)  # the journal existed before every write
    assert acc.values[cli.inode][K.KEEPALIVE_TIME] == 120
    j = load_journal(paths)
    assert [e["state"] for e in j["entries"]] == ["applied"]
    assert {(c["key"], c["old"]) for c in j["entries"][0]["changes"]} == {
        (K.KEEPALIVE_TIME, 7200), (K.KEEPALIVE_INTVL, 75), (K.CT_MAX, 262144)}
    assert str(paths.sysctl_conf) in out.files
    assert "net.netfilter.nf_conntrack_max = 524288" in paths.sysctl_conf.read_text()
    ns_conf = (paths.netns_dir / "cli.conf").read_text()
    assert "net.ipv4.tcp_keepalive_time = 120" in ns_conf
    assert paths.unit_link.resolve() == paths.unit


def test_failed_write_rolls_back_everything_already_applied(tmp_path, paths):
    acc = FakeAccess()
    plan, cli = _plan(acc, tmp_path)
    acc.fail_on.add((K.CT_MAX, 524288))
    with pytest.raises(ApplyError) as e:
        apply_plan(plan, acc, paths)
    msg = str(e.value)
    assert "Permission denied" in msg and "restored" in msg and "tcp_keepalive_time=7200" in msg
    assert acc.values[cli.inode][K.KEEPALIVE_TIME] == 7200
    assert acc.values[cli.inode][K.KEEPALIVE_INTVL] == 75
    assert load_journal(paths)["entries"] == []
    assert not paths.sysctl_conf.exists() and not paths.unit.exists()


def test_readback_mismatch_rolls_back(tmp_path, paths):
    acc = FakeAccess()
    plan, cli = _plan(acc, tmp_path)
    acc.skew[(K.KEEPALIVE_INTVL, 30)] = 1
    with pytest.raises(ApplyError, match="wrote 30, the kernel reads back 31"):
        apply_plan(plan, acc, paths)
    # Both the earlier change and the altered value itself are put back.
    assert acc.values[cli.inode][K.KEEPALIVE_TIME] == 7200
    assert acc.values[cli.inode][K.KEEPALIVE_INTVL] == 75
    assert load_journal(paths)["entries"] == []


def test_failed_persist_rolls_back_values(tmp_path, paths):
    acc = FakeAccess()
    plan, cli = _plan(acc, tmp_path)
    paths.sysctl_dir.parent.mkdir(parents=True, exist_ok=True)
    paths.sysctl_dir.write_text("not a directory")
    with pytest.raises(ApplyError):
        apply_plan(plan, acc, paths)
    assert acc.values[cli.inode][K.KEEPALIVE_TIME] == 7200
    assert acc.values[acc.node.inode][K.CT_MAX] == 262144
    assert not (paths.netns_dir / "cli.conf").exists()


def test_rollback_restores_values_and_files_exactly(tmp_path, paths):
    acc = FakeAccess()
    paths.sysctl_conf.parent.mkdir(parents=True)
    paths.sysctl_conf.write_text("# mine\nnet.ipv4.tcp_keepalive_time = 600\n")
    plan, cli = _plan(acc, tmp_path)
    before_values = json.dumps(acc.values, sort_keys=True)
    apply_plan(plan, acc, paths)
    assert "nf_conntrack_max = 524288" in paths.sysctl_conf.read_text()
    assert "tcp_keepalive_time = 600" in paths.sysctl_conf.read_text()  # kept, merged
    rollback_last(acc, paths)
    assert json.dumps(acc.values, sort_keys=True) == before_values
    assert paths.sysctl_conf.read_text() == "# mine\nnet.ipv4.tcp_keepalive_time = 600\n"
    assert not paths.unit.exists() and not paths.unit_link.is_symlink()
    with pytest.raises(ApplyError, match="nothing to roll back"):
        rollback_last(acc, paths)


def test_journal_is_a_stack(tmp_path, paths):
    acc = FakeAccess()
    cli = acc.add(file_target(tmp_path, "cli"))
    for v in (600, 120):
        apply_plan(make_plan([Proposal(cli, K.KEEPALIVE_TIME, v, "")], acc, acc.node), acc, paths)
    rollback_last(acc, paths)
    assert acc.values[cli.inode][K.KEEPALIVE_TIME] == 600
    rollback_last(acc, paths)
    assert acc.values[cli.inode][K.KEEPALIVE_TIME] == 7200


def test_refused_plan_is_never_applied(tmp_path, paths):
    acc = FakeAccess()
    cli = acc.add(file_target(tmp_path, "cli"))
    plan = make_plan([Proposal(cli, K.CT_ESTABLISHED, 60, "", manual=True)], acc, acc.node)
    with pytest.raises(ApplyError, match="refused"):
        apply_plan(plan, acc, paths)
    assert acc.writes == [] and not paths.journal.exists()


def test_corrupt_journal_is_reported(paths):
    paths.journal.parent.mkdir(parents=True)
    paths.journal.write_text("{not json")
    with pytest.raises(ApplyError, match="move it aside"):
        rollback_last(FakeAccess(), paths)


def test_namespace_gone_before_the_first_write_is_an_apply_error(tmp_path, paths):
    acc = FakeAccess()
    plan, cli = _plan(acc, tmp_path)
    # The namespace's path now leads elsewhere and no other path has its inode.
    (tmp_path / "cli").unlink()
    with pytest.raises(ApplyError, match="no longer exists; nothing was changed"):
        apply_plan(plan, acc, paths)
    assert acc.writes == [] and not paths.journal.exists()
    assert not paths.sysctl_conf.exists()


def test_every_error_callers_see_is_a_remedy_error():
    from rsttrace.remedy.model import RemedyError
    from rsttrace.remedy.netns import AccessError, NetnsError
    assert all(issubclass(c, RemedyError) for c in (ApplyError, NetnsError, AccessError))
