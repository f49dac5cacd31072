"""Remediation against the real kernel, in throwaway namespaces (rtfix-*).
Global values (conntrack max/buckets) are changed only relative to the value
read just before, and restored in a finally block."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from rsttrace.remedy import keys as K
from rsttrace.remedy.apply import ApplyError, apply_plan, load_journal, rollback_last
from rsttrace.remedy.model import Change, Plan, Proposal
from rsttrace.remedy.netns import SystemAccess, resolve, self_target
from rsttrace.remedy.paths import Paths
from rsttrace.remedy.planner import make_plan

pytestmark = pytest.mark.kernel
PROC = "/proc/sys/net/netfilter/"


def ns_read(ns, key):
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", K.sysctl_path(key)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def flat(text):
    """Plan text is wrapped at 80 columns."""
    return " ".join(text.split())


def read_global(name):
    with open(PROC + name) as f:
        return int(f.read().split()[0])


def write_global(name, value):
    with open(PROC + name, "w") as f:
        f.write(str(value))


@pytest.fixture
def ns():
    name = f"rtfix-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def env(fix_env, monkeypatch):
    for k, v in fix_env.items():
        monkeypatch.setenv(k, v)
    return fix_env


@pytest.fixture
def paths(env):
    return Paths.from_env(env)


def cli(args, env, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, "-m", "rsttrace", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, stdin=stdin)


def test_apply_verify_persist_idempotent_rollback(ns, env, paths):
    r = cli(["fix", "--netns", ns, "--yes", "--set", "net.ipv4.tcp_keepalive_time=120",
             "--set", "net.ipv4.tcp_keepalive_intvl=30",
             "--set", "nf_conntrack_tcp_timeout_established=86400"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ns_read(ns, K.KEEPALIVE_TIME) == 120 and ns_read(ns, K.KEEPALIVE_INTVL) == 30
    assert ns_read(ns, K.CT_ESTABLISHED) == 86400
    conf = (paths.netns_dir / f"{ns}.conf").read_text()
    assert "net.ipv4.tcp_keepalive_time = 120\n" in conf
    assert "net.netfilter.nf_conntrack_tcp_timeout_established = 86400\n" in conf
    assert paths.unit.exists() and not paths.sysctl_conf.exists()

    again = cli(["fix", "--netns", ns, "--yes", "--set", "net.ipv4.tcp_keepalive_time=120"], env)
    assert again.returncode == 0 and "Nothing to do" in again.stdout
    assert len(load_journal(paths)["entries"]) == 1

    # no --set, nothing seen in a short watch: not "nothing to do", but how to see more
    quiet = cli(["fix", "--netns", ns, "--dry-run", "--observe", "1"], env)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "No reset seen in" in flat(quiet.stdout) and "--from FILE.jsonl" in quiet.stdout

    back = cli(["fix", "--rollback"], env)
    assert back.returncode == 0, back.stderr
    assert (ns_read(ns, K.KEEPALIVE_TIME), ns_read(ns, K.KEEPALIVE_INTVL),
            ns_read(ns, K.CT_ESTABLISHED)) == (7200, 75, 432000)
    assert not (paths.netns_dir / f"{ns}.conf").exists() and not paths.unit.exists()
    assert load_journal(paths)["entries"] == []


def test_reapply_sets_persisted_values_again(ns, env, paths):
    assert cli(["fix", "--netns", ns, "--yes", "--set", "tcp_keepalive_probes=4"], env).returncode == 0
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_keepalive_probes=9"],
                   check=True)
    r = cli(["fix", "--reapply"], env)
    assert r.returncode == 0, r.stderr
    assert ns_read(ns, K.KEEPALIVE_PROBES) == 4
    assert cli(["fix", "--rollback"], env).returncode == 0
    assert ns_read(ns, K.KEEPALIVE_PROBES) == 9


def test_failed_write_rolls_back_the_namespace(ns, paths):
    # nf_conntrack_max is read-only inside a child namespace: the second write fails.
    access, t = SystemAccess(), resolve(ns)
    plan = Plan(changes=[Change(t, K.KEEPALIVE_TIME, 7200, 300),
                         Change(t, K.CT_MAX, None, read_global("nf_conntrack_max") + 1)])
    with pytest.raises(ApplyError) as e:
        apply_plan(plan, access, paths)
    assert "Permission denied" in str(e.value) and "tcp_keepalive_time=7200" in str(e.value)
    assert ns_read(ns, K.KEEPALIVE_TIME) == 7200
    assert load_journal(paths)["entries"] == [] and not paths.netns_dir.exists()


def test_readback_mismatch_rolls_back_global_and_namespace(ns, paths):
    # The kernel rounds the conntrack hash up to whole pages of buckets, so
    # asking for one more bucket reads back a different number.
    access, t, node = SystemAccess(), resolve(ns), self_target()
    before = read_global("nf_conntrack_buckets")
    try:
        plan = Plan(changes=[Change(t, K.KEEPALIVE_TIME, 7200, 300),
                             Change(node, K.CT_BUCKETS, before, before + 1, scope="global",
                                    via=access.buckets_via())])
        with pytest.raises(ApplyError, match=f"wrote {before + 1}, the kernel reads back"):
            apply_plan(plan, access, paths)
        assert read_global("nf_conntrack_buckets") == before
        assert ns_read(ns, K.KEEPALIVE_TIME) == 7200
    finally:
        write_global("nf_conntrack_buckets", before)


def test_global_max_applied_persisted_and_rolled_back(paths):
    access, node = SystemAccess(), self_target()
    before = read_global("nf_conntrack_max")
    try:
        plan = make_plan([Proposal(node, K.CT_MAX, before + 4096, "test", manual=True)],
                         access, node)
        assert plan.ok, plan.errors
        apply_plan(plan, access, paths)
        assert read_global("nf_conntrack_max") == before + 4096
        assert f"net.netfilter.nf_conntrack_max = {before + 4096}\n" in paths.sysctl_conf.read_text()
        rollback_last(access, paths)
        assert read_global("nf_conntrack_max") == before and not paths.sysctl_conf.exists()
    finally:
        write_global("nf_conntrack_max", before)


def test_refusals_change_nothing(ns, env):
    before = read_global("nf_conntrack_max")
    r = cli(["fix", "--yes", "--netns", ns, "--set", "nf_conntrack_tcp_timeout_established=60"], env)
    assert r.returncode == 1 and "tcp_keepalive_time 7200 >= nf_conntrack" in flat(r.stdout)
    assert ns_read(ns, K.CT_ESTABLISHED) == 432000
    r = cli(["fix", "--yes", "--set", "nf_conntrack_max=2000000000"], env)
    assert r.returncode == 1 and "RAM" in flat(r.stdout) and "2000000000" in r.stdout
    assert read_global("nf_conntrack_max") == before
    r = cli(["fix", "--set", "tcp_keepalive_time=60", "--netns", ns], env)
    assert r.returncode == 2 and "not a terminal" in r.stderr
    assert ns_read(ns, K.KEEPALIVE_TIME) == 7200
    r = cli(["fix", "--yes", "--netns", "rtfix-does-not-exist", "--set", "tcp_keepalive_time=60"], env)
    assert r.returncode == 2 and "ip netns list" in r.stderr


def test_from_recording_plans_the_analysis_fix(ns, env, tmp_path):
    inode = os.stat(f"/run/netns/{ns}").st_ino
    rec = tmp_path / "r.jsonl"
    lines = [{"kind": "header", "schema": 1, "t": 1.0, "netns_names": {str(inode): ns}},
             {"kind": "ctx", "t": 2.0, "namespaces": [
                 {"netns": inode, "name": ns, "ct": None, "ipvs": None,
                  "sysctl": {"tcp_keepalive_time": 7200,
                             "nf_conntrack_tcp_timeout_established": 300}}]},
             {"kind": "totals", "events": 0, "lost": 0, "by_kind": {}}]
    rec.write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = cli(["fix", "--from", str(rec), "--yes"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ns_read(ns, K.KEEPALIVE_TIME) == 150
    assert "securityContext" in r.stdout and "SetConnMaxIdleTime" in r.stdout
    assert cli(["fix", "--rollback"], env).returncode == 0
    assert ns_read(ns, K.KEEPALIVE_TIME) == 7200


def test_ipvs_absent_here_is_said(ns, env):
    r = cli(["fix", "--dry-run", "--netns", ns, "--set", "ipvs.tcp=900"], env)
    assert r.returncode == 1 and "IPVS is not in this kernel" in r.stdout


def test_a_second_fix_is_turned_away_while_one_runs(ns, env):
    """The first run waits at its prompt, holding the lock: a second run
    that would change something exits 2 with one line saying who holds it;
    a dry run goes ahead."""
    import pty
    import select
    import time
    master, slave = pty.openpty()
    first = subprocess.Popen([sys.executable, "-m", "rsttrace", "fix", "--netns", ns, "--set",
                              "net.ipv4.tcp_keepalive_time=120"], env={**os.environ, **env},
                             stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        seen, deadline = b"", time.monotonic() + 60
        while b"[y/N]" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 4096)
        assert b"[y/N]" in seen, seen
        for args in (["--yes"], ["--rollback"], ["--reapply"]):
            r = cli(["fix", *args, "--netns", ns, "--set", "net.ipv4.tcp_keepalive_time=60"], env)
            assert r.returncode == 2, r.stdout + r.stderr
            assert r.stderr.count("\n") == 1 and r.stderr.startswith(
                f"rsttrace: another rsttrace fix is running: pid {first.pid} ("), r.stderr
        dry = cli(["fix", "--dry-run", "--netns", ns, "--set", "net.ipv4.tcp_keepalive_time=60"], env)
        assert dry.returncode == 0 and "Dry run" in dry.stdout, dry.stdout + dry.stderr
        assert ns_read(ns, K.KEEPALIVE_TIME) == 7200
        os.write(master, b"n\n")
        assert first.wait(timeout=30) == 1
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        os.close(master)
    assert ns_read(ns, K.KEEPALIVE_TIME) == 7200


def test_a_damaged_journal_stops_fix_with_one_line(ns, env, paths):
    r = cli(["fix", "--yes", "--netns", ns, "--set", "net.ipv4.tcp_keepalive_time=120"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    journal = json.loads(paths.journal.read_text())
    journal["version"] = 99
    paths.journal.write_text(json.dumps(journal))
    for args in (["--rollback"], ["--yes", "--netns", ns, "--set", "net.ipv4.tcp_keepalive_intvl=30"]):
        r = cli(["fix", *args], env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr == (f"rsttrace: the journal {paths.journal} is damaged: version 99, this "
                            "rsttrace reads version 1; nothing was changed: move it aside to go on "
                            "(what it records can then no longer be rolled back)\n")
    assert ns_read(ns, K.KEEPALIVE_TIME) == 120 and ns_read(ns, K.KEEPALIVE_INTVL) == 75
