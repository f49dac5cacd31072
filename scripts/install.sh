#!/usr/bin/env bash
# Idempotent set-up for a Debian 12 machine, as root: Debian packages, a
# virtual environment that can see Debian's bcc, and rsttrace with its extras.
# Called by `make demo` and `make test`; safe to run again (it skips what is there).
# Arguments: more Debian packages to install the same way.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

if [ "$(id -u)" -ne 0 ]; then
    echo "rsttrace set-up needs root (apt-get, BPF, network namespaces): run it with sudo" >&2
    exit 1
fi

# bcc (python3-bpfcc) exists only for Debian's /usr/bin/python3; kernel headers
# let bcc compile (rsttrace finds Debian's headers when the running kernel's
# are absent); the rest is what the lab and the context collectors use.
pkgs=(python3-bpfcc bpfcc-tools linux-headers-amd64 python3-venv python3-pip
      nftables conntrack iproute2 kmod mariadb-server mariadb-client ipvsadm tcpdump bpftool
      prometheus)
# extra Debian packages a caller needs too (scripts/vm/provision.sh: qemu, busybox)
pkgs+=("$@")
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # mariadb-server's postinst tries to start the system service; the lab runs
    # its own server in a namespace, so the system one is not needed.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The system MariaDB and Prometheus are not used (the lab and the exporter's
# tests start their own); keep them from holding ports or memory.
for svc in mariadb prometheus prometheus-node-exporter; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    fi
done

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import bcc' 2>/dev/null; then
    echo "install: virtual environment $venv (from /usr/bin/python3, with system site-packages for bcc)"
    rm -rf "$venv"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp="$venv/.rsttrace-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "install: pip install -e '.[test]'"
    "$venv/bin/pip" install -q --disable-pip-version-check -e ".[test]"
    touch "$stamp"
fi
