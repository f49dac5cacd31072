"""The Vagrantfile as Vagrant reads it: `vagrant validate` loads it with the
libvirt provider's plugin and checks Vagrant's and libvirt's settings
(Debian's Vagrant has no VirtualBox provider, so that block goes unchecked;
no box is fetched or booted: this machine cannot reach Vagrant's box
catalogue). `make test` installs Vagrant and vagrant-libvirt from Debian."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VAGRANT = shutil.which("vagrant")

pytestmark = pytest.mark.skipif(
    VAGRANT is None, reason="vagrant is not installed (`make test` installs it: "
    "bash scripts/install.sh vagrant vagrant-libvirt)")


def validate(folder: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`vagrant validate` in `folder`, its state and plugins' home kept in
    tmp_path (nothing written to the checkout or ~/.vagrant.d)."""
    env = dict(os.environ, VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_CHECKPOINT_DISABLE="1")
    return subprocess.run([VAGRANT, "validate"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_vagrantfile_validates(tmp_path):
    r = validate(ROOT, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
    assert not (ROOT / ".vagrant").exists()


@pytest.mark.parametrize("good, bad, complaint", [
    ("lv.memory = 4096", "lv.memroy = 4096", "memroy"),
    ("config.vm.hostname", "config.vm.hostnme", "hostnme"),
    ('config.vm.provision "shell"', 'config.vm.provision "shel"', "shel"),
])
def test_a_misspelt_setting_fails_validation(tmp_path, good, bad, complaint):
    """The check above can fail: the same file with one setting misspelt."""
    text = (ROOT / "Vagrantfile").read_text()
    assert good in text
    folder = tmp_path / "box"
    folder.mkdir()
    (folder / "Vagrantfile").write_text(text.replace(good, bad, 1))
    r = validate(folder, tmp_path)
    assert r.returncode != 0
    assert complaint in r.stdout + r.stderr


def test_the_provisioner_runs_scripts_that_exist():
    text = (ROOT / "Vagrantfile").read_text()
    for script in ("scripts/vm/provision.sh",):
        assert f"bash {script}" in text
        assert (ROOT / script).is_file()
