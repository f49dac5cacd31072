#!/usr/bin/env bash
# The vm tier: boots Debian's 5.10, 6.1 and 6.12 under virtme-ng and runs the tracer
# kernel tests and the IPVS lab in each (tests/vm/); README gives the time per kernel.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/vm/provision.sh
export RSTTRACE_VM_TIER=1
exec .venv/bin/python -m pytest tests/vm -q -rA -s -p no:cacheprovider "$@"
