#!/usr/bin/env bash
# Every test tier, as `make test` runs it after scripts/install.sh:
#   unit   (no root)                     tests/unit
#   kernel (root: real BPF, namespaces)  tests/kernel
#   fuzz   (recordings mutated by hypothesis through report, live --replay,
#           export --replay and fix --from; derandomized, about a minute)
#                                        tests/fuzz
#   vm     (Debian 5.10, 6.1 and 6.12 kernels with IPVS and kprobes, under
#           virtme-ng; README: the time per kernel)  tests/vm via scripts/vm/test.sh
# RSTTRACE_SKIP_VM=1 leaves the vm tier out (and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
.venv/bin/python -m pytest tests -q -p no:cacheprovider --ignore=tests/vm "$@"
if [ "${RSTTRACE_SKIP_VM:-0}" = "1" ]; then
    echo "vm tier NOT run (RSTTRACE_SKIP_VM=1)"
    exit 0
fi
exec bash scripts/vm/test.sh
