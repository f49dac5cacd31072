import os

from rsttrace.remedy import keys as K
from rsttrace.remedy import persist
from rsttrace.remedy.files import FileState, atomic_write
from rsttrace.remedy.model import Change, Plan, Target
from rsttrace.remedy.netns import self_target
from rsttrace.remedy.paths import Paths


def _paths(tmp_path):
    return Paths.from_env({f"RSTTRACE_{k}_DIR": str(tmp_path / k.lower())
                           for k in ("STATE", "SYSCTL", "ETC", "MODPROBE", "SYSTEMD")})


def test_render_sorts_values_into_their_persisted_homes(tmp_path):
    node = self_target()
    named = Target("name", "cli", 11, "/run/netns/cli", "cli")
    pod = Target("pid", "42", 12, "/proc/42/ns/net", "pid:42")
    plan = Plan(changes=[
        Change(node, K.CT_MAX, 1, 524288, scope="global"),
        Change(node, K.CT_BUCKETS, 1, 131072, scope="global", via="hashsize"),
        Change(node, K.IPVS_TCP, 900, 3600, via="ipvs"),
        Change(named, K.KEEPALIVE_TIME, 7200, 120),
        Change(pod, K.KEEPALIVE_TIME, 7200, 120),
    ])
    paths = _paths(tmp_path)
    files, notes = persist.render(plan, paths)
    assert files[paths.sysctl_conf].endswith("net.netfilter.nf_conntrack_max = 524288\n")
    assert "options nf_conntrack hashsize=131072" in files[paths.modprobe_conf]
    assert "ipvs.tcp = 3600" in files[paths.netns_dir / "init.conf"]
    assert "net.ipv4.tcp_keepalive_time = 120" in files[paths.netns_dir / "cli.conf"]
    assert "-m rsttrace fix --reapply" in files[paths.unit]
    assert len(files) == 5 and "pid:42" in notes[0]


def test_render_merges_with_what_rsttrace_persisted_before(tmp_path):
    paths = _paths(tmp_path)
    atomic_write(paths.sysctl_conf, persist.render_conf({K.KEEPALIVE_TIME: "600", K.CT_MAX: "1"}))
    plan = Plan(changes=[Change(self_target(), K.CT_MAX, 1, 2048, scope="global")])
    files, _ = persist.render(plan, paths)
    assert persist.parse_conf(files[paths.sysctl_conf]) == {K.KEEPALIVE_TIME: "600", K.CT_MAX: "2048"}


def test_reapply_reads_back_what_render_wrote(tmp_path):
    paths = _paths(tmp_path)
    atomic_write(paths.netns_dir / "cli.conf", persist.render_conf({"tcp_keepalive_time": "120"}))
    assert persist.read_netns_confs(paths) == ({"cli": {K.KEEPALIVE_TIME: 120}}, [])


def test_atomic_write_leaves_no_temp_file(tmp_path):
    p = tmp_path / "d" / "f.conf"
    atomic_write(p, "a\n")
    atomic_write(p, "b\n")
    assert p.read_text() == "b\n" and os.listdir(p.parent) == ["f.conf"]


def test_file_state_restores_content_absence_and_symlinks(tmp_path):
    f, gone, link = tmp_path / "f", tmp_path / "gone", tmp_path / "link"
    f.write_text("old")
    link.symlink_to("/somewhere")
    states = [FileState.capture(p) for p in (f, gone, link)]
    f.write_text("new")
    gone.write_text("created")
    link.unlink()
    link.write_text("replaced")
    for s in (FileState.from_json(s.to_json()) for s in states):
        s.restore()
    assert f.read_text() == "old" and not gone.exists()
    assert os.readlink(link) == "/somewhere"
