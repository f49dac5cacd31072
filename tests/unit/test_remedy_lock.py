"""One `rsttrace fix` at a time (remedy/lock.py): a second process is
turned away at once, told who holds the lock."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from rsttrace.remedy import keys as K
from rsttrace.remedy.apply import apply_plan, rollback_last
from rsttrace.remedy.lock import LockHeld, fix_lock
from rsttrace.remedy.model import Proposal
from rsttrace.remedy.paths import Paths
from rsttrace.remedy.planner import make_plan

from test_remedy_fakes import FakeAccess, file_target, files_as_namespaces  # noqa: F401

HOLD = textwrap.dedent("""
    import sys
    from rsttrace.remedy.lock import fix_lock
    from rsttrace.remedy.paths import Paths
    with fix_lock(Paths.from_env()):
        print("held", flush=True)
        sys.stdin.read()
""")


@pytest.fixture
def paths(fix_env):
    return Paths.from_env(fix_env)


@pytest.fixture
def holder(fix_env):
    p = subprocess.Popen([sys.executable, "-c", HOLD, "--tag"], env={**os.environ, **fix_env},
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    yield p
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)


def test_a_second_process_is_told_who_holds_the_lock(holder, paths):
    with pytest.raises(LockHeld) as e:
        with fix_lock(paths):
            pass
    msg = str(e.value)
    assert re.fullmatch(rf"another rsttrace fix is running: pid {holder.pid} \(`-c --tag`\) "
                        rf"since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d holds {paths.lock}; "
                        "wait for it to finish", msg), msg


def test_apply_and_rollback_wait_for_nobody_and_change_nothing(holder, paths, tmp_path):
    acc = FakeAccess()
    cli = acc.add(file_target(tmp_path, "cli"))
    plan = make_plan([Proposal(cli, K.KEEPALIVE_TIME, 120, "")], acc, acc.node)
    with pytest.raises(LockHeld):
        apply_plan(plan, acc, paths)
    with pytest.raises(LockHeld):
        rollback_last(acc, paths)
    assert acc.writes == [] and not paths.journal.exists()


def test_the_lock_goes_with_its_holder(holder, paths):
    holder.kill()
    holder.wait(timeout=10)
    with fix_lock(paths):
        assert (paths.lock.stat().st_mode & 0o777) == 0o600


def test_reentrant_in_one_process(paths, tmp_path):
    acc = FakeAccess()
    cli = acc.add(file_target(tmp_path, "cli"))
    with fix_lock(paths):
        with fix_lock(paths):
            pass
        apply_plan(make_plan([Proposal(cli, K.KEEPALIVE_TIME, 120, "")], acc, acc.node),
                   acc, paths)
    assert acc.values[cli.inode][K.KEEPALIVE_TIME] == 120


def test_a_planted_link_is_not_followed(paths, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    paths.state_dir.mkdir(parents=True)
    paths.lock.symlink_to(victim)
    with pytest.raises(LockHeld, match="must be a regular file"):
        with fix_lock(paths):
            pass
    assert victim.read_text() == "keep me\n"
