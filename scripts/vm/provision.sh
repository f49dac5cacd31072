#!/usr/bin/env bash
# What the vm tier (and `rsttrace demo --vm`) needs on a Debian 12 machine, as
# root, idempotent: the base set-up (scripts/install.sh), qemu and busybox
# for virtme-ng, virtme-ng in the venv, and Debian's kernels unpacked under
# /var/cache/rsttrace-vm (lab/vm.py): 6.1 and 6.12 from this machine's
# sources, Debian 11's 5.10 from Debian 11's archive through a source list
# that apt uses for that download only (nothing of Debian 11 is installed).
# The Vagrantfile runs it too (RSTTRACE_VM_KERNELS= skips the kernels there:
# the box boots its own Debian kernel, which has IPVS and kprobes).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
bash scripts/install.sh qemu-system-x86 busybox-static
if [ ! -x .venv/bin/vng ]; then
    echo "provision: pip install '.[vm]' (virtme-ng)"
    .venv/bin/pip install -q --disable-pip-version-check -e ".[test,vm]"
fi
for k in ${RSTTRACE_VM_KERNELS-5.10 6.1 6.12}; do
    .venv/bin/python -c "import sys; from rsttrace.lab import vm; k = vm.fetch(sys.argv[1], say=lambda m: print('provision:', m)); print('provision: kernel', k.release, 'ready')" "$k"
done
