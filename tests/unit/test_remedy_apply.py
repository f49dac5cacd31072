import json
import os

import pytest

from rsttrace.remedy import keys as K
from rsttrace.remedy.apply import (ApplyError, JournalError, apply_plan, load_journal, reapply,
                                   rollback_last)
from rsttrace.remedy.model import Proposal
from rsttrace.remedy.paths import Paths
from rsttrace.remedy.planner import make_plan

from test_remedy_fakes import COOKIES, FakeAccess, file_target, files_as_namespaces  # noqa: F401


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
    from rsttrace.remedy.lock import LockHeld
    from rsttrace.remedy.model import RemedyError
    from rsttrace.remedy.netns import AccessError, NetnsError
    assert all(issubclass(c, RemedyError)
               for c in (ApplyError, JournalError, NetnsError, AccessError, LockHeld))


def _applied(tmp_path, paths):
    """A real journal entry to damage, and the fake node it came from."""
    acc = FakeAccess()
    cli = acc.add(file_target(tmp_path, "cli"))
    apply_plan(make_plan([Proposal(cli, K.KEEPALIVE_TIME, 120, "")], acc, acc.node), acc, paths)
    return acc, cli, json.loads(paths.journal.read_text())


@pytest.mark.parametrize("damage, what", [
    (lambda j: j.update(version=7), "version 7, this rsttrace reads version 1"),
    (lambda j: j.pop("version"), "version None"),
    (lambda j: j.update(entries={}), "'entries' is not a list"),
    (lambda j: j["entries"].append("x"), "entry 2 is not an object"),
    (lambda j: j["entries"][0].pop("changes"), "entry 1: 'changes' is not a list"),
    (lambda j: j["entries"][0].update(state="maybe"),
     "entry 1 lacks an id, a time or a known state"),
    (lambda j: j["entries"][0]["changes"][0].update(new="120"),
     "entry 1, change 1: its old or new value is not an integer"),
    (lambda j: j["entries"][0]["changes"][0].update(key="kernel.core_pattern"),
     "entry 1, change 1: key 'kernel.core_pattern' is not one rsttrace sets"),
    (lambda j: j["entries"][0]["changes"][0]["target"].update(inode=None),
     "entry 1, change 1: target inode is not a positive integer"),
    (lambda j: j["entries"][0]["changes"][0]["target"].update(kind="file"),
     "entry 1, change 1: target kind 'file' is not one of self, name, pid"),
    (lambda j: j["entries"][0]["files"].append({"path": "/etc/shadow", "content": "x"}),
     "entry 1, file 4: '/etc/shadow' is not a file rsttrace writes"),
    (lambda j: j["entries"][0]["files"][0].update(mode=0o100000),
     "entry 1, file 1: its mode is not a file mode"),
    (lambda j: j["entries"][0]["files"][0].update(content=["a"]),
     "entry 1, file 1: its content is not a string"),
])
def test_a_damaged_journal_is_named_and_nothing_is_done(tmp_path, paths, damage, what):
    acc, cli, journal = _applied(tmp_path, paths)
    damage(journal)
    paths.journal.write_text(json.dumps(journal))
    writes = len(acc.writes)
    for run in (lambda: rollback_last(acc, paths),
                lambda: apply_plan(make_plan([Proposal(cli, K.KEEPALIVE_INTVL, 30, "")], acc,
                                             acc.node), acc, paths)):
        with pytest.raises(JournalError) as e:
            run()
        assert str(e.value).startswith(f"the journal {paths.journal} is damaged: {what}")
        assert "\n" not in str(e.value)
    assert len(acc.writes) == writes and acc.values[cli.inode][K.KEEPALIVE_TIME] == 120
    assert json.loads(paths.journal.read_text()) == journal


def test_a_journal_that_is_not_a_regular_file_is_refused(paths):
    paths.state_dir.mkdir(parents=True)
    os.mkfifo(paths.journal)
    with pytest.raises(JournalError, match="not a regular file"):
        rollback_last(FakeAccess(), paths)


def test_reapply_never_reads_a_persisted_name_as_a_process_or_the_node(paths, monkeypatch,
                                                                       tmp_path):
    """netns.d/1.conf is /run/netns/1, not pid 1 (whose namespace is the
    node's); host, root likewise; init.conf is the node's by design."""
    from rsttrace.remedy import netns
    monkeypatch.setattr(netns, "RUN_NETNS", str(tmp_path / "none"))
    acc = FakeAccess()
    paths.netns_dir.mkdir(parents=True)
    for name in ("1", "host", "root", "init"):
        (paths.netns_dir / f"{name}.conf").write_text(f"{K.KEEPALIVE_PROBES} = 4\n")
    done, problems = reapply(acc, paths)
    assert done == [f"{K.KEEPALIVE_PROBES}=4 in {acc.node.label}"]   # init.conf alone
    assert acc.writes == [(acc.node.label, K.KEEPALIVE_PROBES, 4)]
    assert sorted(p.split(" (")[0] for p in problems) == [
        f"no namespace {tmp_path}/none/{n}" for n in ("1", "host", "root")]


def test_rollback_restores_a_files_mode(tmp_path, paths):
    acc = FakeAccess()
    paths.sysctl_conf.parent.mkdir(parents=True)
    paths.sysctl_conf.write_text("# mine\n")
    os.chmod(paths.sysctl_conf, 0o600)
    plan, _ = _plan(acc, tmp_path)
    apply_plan(plan, acc, paths)
    assert os.stat(paths.sysctl_conf).st_mode & 0o777 == 0o600   # kept while rsttrace's
    os.chmod(paths.sysctl_conf, 0o640)
    rollback_last(acc, paths)
    assert paths.sysctl_conf.read_text() == "# mine\n"
    assert os.stat(paths.sysctl_conf).st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_rollback_restores_a_files_owner(tmp_path, paths):
    acc = FakeAccess()
    paths.sysctl_conf.parent.mkdir(parents=True)
    paths.sysctl_conf.write_text("# theirs\n")
    os.chown(paths.sysctl_conf, 4321, 4322)
    plan, _ = _plan(acc, tmp_path)
    apply_plan(plan, acc, paths)
    os.chown(paths.sysctl_conf, 0, 0)
    rollback_last(acc, paths)
    st = os.stat(paths.sysctl_conf)
    assert (st.st_uid, st.st_gid) == (4321, 4322)


def test_a_persisted_file_that_is_not_regular_stops_the_apply(tmp_path, paths):
    """A FIFO where a file goes would block the snapshot's read forever."""
    acc = FakeAccess()
    paths.sysctl_conf.parent.mkdir(parents=True)
    os.mkfifo(paths.sysctl_conf)
    plan, cli = _plan(acc, tmp_path)
    with pytest.raises(ApplyError, match="not a regular file; move it aside; nothing was changed"):
        apply_plan(plan, acc, paths)
    assert acc.writes == [] and not paths.journal.exists()


def test_a_namespace_replaced_after_planning_is_not_written(tmp_path, paths):
    """Deleted and its inode (and path) taken by a new namespace between
    the plan and the apply: nothing is written, anywhere."""
    acc = FakeAccess()
    plan, cli = _plan(acc, tmp_path)
    COOKIES[cli.path] += 1
    with pytest.raises(ApplyError, match="no longer exists.*; nothing was changed"):
        apply_plan(plan, acc, paths)
    assert acc.writes == [] and not paths.journal.exists()
