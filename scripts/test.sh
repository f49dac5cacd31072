#!/usr/bin/env bash
# Every test tier: unit (no root), kernel (root: real BPF, namespaces, conntrack).
# Called by `make test` after scripts/install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
