"""Pod of a cgroup id, on fake cgroup trees shaped like both kubelet cgroup
drivers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rsttrace.schema.catalog import EV_RESET, EVF_HAS_SOCK, EVF_OWNER
from rsttrace.tracer.events import EVENT_DTYPE, Decoder
from rsttrace.tracer.pods import PodResolver, cgroup2_root, pod_uid

UID = "3f1c2a9e-8b7d-4e21-9a0f-5c6d7e8f9a0b"
UID2 = "00000000-1111-2222-3333-444444444444"


def tree(tmp_path):
    root = tmp_path / "cgroup"
    systemd = root / "kubepods.slice" / "kubepods-burstable.slice" / \
        f"kubepods-burstable-pod{UID.replace('-', '_')}.slice" / "cri-containerd-abc.scope"
    cgroupfs = root / "kubepods" / "besteffort" / f"pod{UID2}" / "0123456789ab"
    other = root / "system.slice" / "ssh.service"
    for d in (systemd, cgroupfs, other):
        d.mkdir(parents=True)
    logs = tmp_path / "pods"
    (logs / f"payments_mysql-client-7d9f_{UID}").mkdir(parents=True)
    return root, logs, systemd, cgroupfs, other


def test_pod_uid_from_both_drivers():
    assert pod_uid(f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-x.scope") == UID
    assert pod_uid(f"/kubepods/burstable/pod{UID}/abc") == UID
    assert pod_uid("/system.slice/ssh.service") is None


def test_resolver_names_pods_from_the_kubelet_log_dirs(tmp_path):
    root, logs, systemd, cgroupfs, other = tree(tmp_path)
    r = PodResolver(root=root, pods_log=logs)
    assert r(os.stat(systemd).st_ino) == "payments/mysql-client-7d9f"
    assert r(os.stat(systemd.parent).st_ino) == "payments/mysql-client-7d9f"
    assert r(os.stat(cgroupfs).st_ino) == f"uid:{UID2}"   # no log dir: the UID
    assert r(os.stat(other).st_ino) is None


def test_new_cgroups_are_found_at_the_next_scan(tmp_path):
    root, logs, *_ = tree(tmp_path)
    r = PodResolver(root=root, pods_log=logs, rescan_s=3600)
    assert r(1) is None  # first read: no such cgroup, remembered
    late = root / "kubepods" / f"pod{UID}" / "ctr"
    late.mkdir(parents=True)
    assert r(os.stat(late).st_ino) is None          # no read due yet; not remembered either
    r.rescan_s = 0
    assert r(os.stat(late).st_ino) == "payments/mysql-client-7d9f"
    assert 1 in r._cache and r._cache[1] is None


def test_no_cgroup2_means_no_pod(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text("25 30 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert cgroup2_root(str(mi)) is None
    mi.write_text("25 30 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                  "26 30 0:23 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw\n")
    assert str(cgroup2_root(str(mi))) == "/sys/fs/cgroup/unified"
    assert PodResolver(root=None)(12345) is None


def test_decoder_adds_the_pod_of_the_owner(tmp_path):
    root, logs, systemd, *_ = tree(tmp_path)
    cg = os.stat(systemd).st_ino
    a = np.zeros(3, EVENT_DTYPE)
    a["kind"] = EV_RESET
    a["dir"] = 2
    a["family"] = 2
    a["flags"] = [EVF_HAS_SOCK | EVF_OWNER, EVF_HAS_SOCK | EVF_OWNER, EVF_HAS_SOCK]
    a["cgroup"] = [cg, 999_999_999, cg]
    d = Decoder(hz=250, mono_to_unix=0.0, pod_of=PodResolver(root=root, pods_log=logs))
    recs = d.decode_array(a)
    # the third has no owner: no pod, even with a known cgroup value
    assert [r["pod"] for r in recs] == ["payments/mysql-client-7d9f", None, None]
    import json
    assert [json.loads(line) for line in d.encode_jsonl(a).decode().split("\n")[:-1]] == recs


def test_mountinfo_with_bytes_that_are_not_utf8(tmp_path):
    # `ip netns add $'rt\xff'` bind-mounts /run/netns/rt\xff: its line holds
    # the raw byte; a space in a path is written \040 by the kernel.
    mi = tmp_path / "mountinfo"
    mi.write_bytes(b"40 25 0:4 net:[4026532174] /run/netns/rt\xff rw shared:5 - nsfs nsfs rw\n"
                   b"41 25 0:33 / /mnt/a\\040b\xfe rw - ext4 /dev/sda1 rw\n"
                   b"42 25 0:27 / /sys/fs/cgroup/uni\\040fied rw - cgroup2 cgroup2 rw\n")
    assert cgroup2_root(str(mi)) == Path("/sys/fs/cgroup/uni fied")
    mi.write_bytes(b"42 25 0:27 / /sys/fs/cg\xff rw - cgroup2 cgroup2 rw\n")
    assert os.fsencode(cgroup2_root(str(mi))) == b"/sys/fs/cg\xff"


def test_pod_name_with_bytes_that_are_not_utf8_is_text(tmp_path):
    root, logs, systemd, *_ = tree(tmp_path)
    os.rename(logs / f"payments_mysql-client-7d9f_{UID}",
              os.path.join(os.fsencode(logs), b"pay\xffments_db_" + UID.encode()))
    pod = PodResolver(root=root, pods_log=logs)(os.stat(systemd).st_ino)
    assert pod == "pay\\xffments/db"
    pod.encode("utf-8")


def test_cgroup2_root_past_a_mount_point_that_is_not_utf8(tmp_path):
    # a namespace named with any bytes in /run/netns is a mount point too,
    # and the DaemonSet mounts the host's /run/netns into the container
    mi = tmp_path / "mountinfo"
    mi.write_bytes(b"47 46 0:4 net:[4026532174] /run/netns/rt\xff rw shared:2 - nsfs nsfs rw\n"
                   b"35 24 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    assert str(cgroup2_root(str(mi))) == "/sys/fs/cgroup/unified"
