"""lab.vm's handling of a guest that dies: booted again only when it died
before the command started, and the oops lines kept in the message. The
boot itself is replaced (the VM tier boots real kernels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsttrace.lab import vm

PANIC = [
    "[    1.30] BUG: kernel NULL pointer dereference, address: 0000000000000010\n",
    "[    1.30] #PF: supervisor read access in kernel mode\n",
    "[    1.31] RIP: 0010:timer_expire+0x1a/0x40\n",
    *[f"[    1.33] R{i}: 0000000000000000\n" for i in range(12)],
    "[    1.34] Kernel panic - not syncing: Fatal exception in interrupt\n",
    "[    4.34] Shutting down cpus with NMI\n",
]


def test_tail_keeps_what_the_oops_says_ahead_of_the_register_dump():
    tail = vm._tail(PANIC)
    assert tail.startswith("[    1.30] BUG: kernel NULL pointer dereference")
    assert "RIP: 0010:timer_expire" in tail
    assert "Kernel panic - not syncing" in tail
    assert tail.count("Kernel panic") == 1
    assert tail.endswith("Shutting down cpus with NMI")


def test_tail_without_an_oops_is_the_last_lines():
    lines = [f"line {i}\n" for i in range(20)]
    assert vm._tail(lines, n=3) == "line 17 | line 18 | line 19"


@pytest.fixture
def boots(monkeypatch):
    """Replace the boot: each entry says how a boot ends ("panic": before
    the command, "died": after it started, an int: the command's code)."""
    plan: list = []
    monkeypatch.setattr(vm.os, "geteuid", lambda: 0)
    monkeypatch.setattr(vm.Kernel, "ready", property(lambda self: True))
    monkeypatch.setattr(vm.shutil, "which", lambda tool: f"/usr/bin/{tool}")

    def boot(k, command, out: Path, t0, timeout_s, memory, cpus, stream):
        how = plan.pop(0)
        if how == "panic":
            return 255, PANIC
        (out / "started").touch()
        if how == "died":
            return 255, PANIC
        (out / "output").write_text("ran\n")
        (out / "rc").write_text(f"{how}\n")
        return 0, ["ran\n"]

    monkeypatch.setattr(vm, "_boot", boot)
    return plan


K = vm.Kernel("6.12", "6.12.117+deb12-amd64")


def test_a_boot_that_panics_before_the_command_is_booted_again(boots):
    boots += ["panic", 0]
    res = vm.run(K, "true")
    assert res.ok and res.output == "ran\n"
    assert len(res.boot_failures) == 1
    assert "while booting" in res.boot_failures[0] and "Kernel panic" in res.boot_failures[0]


def test_boots_again_at_most_boot_attempts_times(boots):
    boots += ["panic"] * vm.BOOT_ATTEMPTS + [0]
    with pytest.raises(vm.VMError, match=rf"before the command started, {vm.BOOT_ATTEMPTS} times.*BUG:"):
        vm.run(K, "true")
    assert boots == [0]


def test_a_guest_that_dies_while_running_the_command_is_not_booted_again(boots):
    boots += ["died", 0]
    with pytest.raises(vm.VMError, match="while running the command.*Kernel panic"):
        vm.run(K, "true")
    assert boots == [0]


def test_the_command_failing_is_a_result_not_a_retry(boots):
    boots += [3, 0]
    res = vm.run(K, "false")
    assert res.returncode == 3 and not res.boot_failures
    assert boots == [0]


def test_tail_does_not_take_boot_chatter_for_an_oops():
    lines = ["[    0.47] NMI watchdog: Perf NMI watchdog permanently disabled\n",
             *[f"[    3.{i}] virtme-ng-init: step {i}\n" for i in range(10)]]
    assert "NMI watchdog" not in vm._tail(lines)


def test_debian_11s_kernel_comes_through_a_source_list_of_its_own(tmp_path, monkeypatch):
    """5.10 is resolved from Debian 11's archive with apt options that name
    a source list, package lists and a cache under the VM cache, and no
    other source; the machine's own lines (6.1, 6.12) use none."""
    monkeypatch.setattr(vm, "CACHE", tmp_path)
    calls: list[list[str]] = []

    def run(cmd, timeout=600.0, cwd=None):
        calls.append(cmd)
        return "linux-image-amd64\n  Depends: linux-image-5.10.0-46-amd64\n" if cmd[0] == "apt-cache" else ""

    monkeypatch.setattr(vm, "_run", run)
    k = vm.resolve("5.10")
    assert k == vm.Kernel("5.10", "5.10.0-46-amd64")
    base = tmp_path / "apt-bullseye"
    update, depends = calls
    assert update[-1] == "update" and depends[-2:] == ["depends", "linux-image-amd64"]
    for cmd in calls:
        opts = dict(o.split("=", 1) for o in cmd[cmd.index("-o") + 1::2] if "=" in o)
        assert opts == {"Dir::Etc::SourceList": str(base / "sources.list"),
                        "Dir::Etc::SourceParts": "/dev/null",
                        "Dir::State::Lists": str(base / "lists"), "Dir::Cache": str(base / "cache")}
    text = (base / "sources.list").read_text()
    assert [ln.split()[-2:] for ln in text.splitlines()] == [["bullseye", "main"],
                                                            ["bullseye-security", "main"]]
    # the lists are read once in ARCHIVE_LISTS_MAX_AGE_S
    calls.clear()
    vm.resolve("5.10")
    assert [c[-1] for c in calls] == ["linux-image-amd64"]
    # this machine's kernel lines: its own sources, nothing else
    assert vm.apt_options(None) == []


def test_a_meta_package_that_names_another_line_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "CACHE", tmp_path)
    monkeypatch.setattr(vm, "_run", lambda cmd, timeout=600.0, cwd=None:
                        "  Depends: linux-image-5.4.0-9-amd64\n" if cmd[0] == "apt-cache" else "")
    with pytest.raises(vm.VMError, match="names 5.4.0-9-amd64, not a 5.10 kernel"):
        vm.resolve("5.10")


def test_cached_kernels_of_a_line_do_not_take_another_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "CACHE", tmp_path)
    monkeypatch.setattr(vm.Kernel, "ready", property(lambda self: True))
    for rel in ("5.10.0-45-amd64", "5.10.0-46-amd64", "6.1.0-57-amd64", "6.12.118+deb12-amd64",
                "apt-bullseye"):
        (tmp_path / rel).mkdir()
    assert vm.cached("5.10").release == "5.10.0-46-amd64"
    assert vm.cached("6.1").release == "6.1.0-57-amd64"
    assert vm.cached("6.12").release == "6.12.118+deb12-amd64"
