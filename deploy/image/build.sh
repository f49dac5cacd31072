#!/usr/bin/env bash
# `make image`: localhost/rsttrace:VERSION and :latest, built with no
# registry. mmdebstrap makes a Debian 12 root file system from Debian's
# archive, setup.sh (the Containerfile's step too) installs rsttrace into
# it, and `podman import` makes it an image with the Containerfile's CMD,
# ENV and LABEL lines.
# The image carries a digest of its inputs (the paths
# Containerfile.dockerignore lets in) as the label rsttrace.inputs: when it
# matches, nothing is rebuilt. --force rebuilds anyway.
# Environment: RSTTRACE_IMAGE (default localhost/rsttrace),
# DEBIAN_MIRROR (default http://deb.debian.org).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=deploy/image
name=${RSTTRACE_IMAGE:-localhost/rsttrace}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' rsttrace/__init__.py)
[ -n "$version" ] || { echo "image: no __version__ in rsttrace/__init__.py" >&2; exit 1; }
mapfile -t paths < <(sed -n 's/^!//p' "$here/Containerfile.dockerignore")

tar_inputs() {
    tar -c --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --exclude=__pycache__ "${paths[@]}"
}
digest=$(tar_inputs | sha256sum | cut -c1-16)
have=$(podman image inspect "$name:$version" \
       --format '{{index .Labels "rsttrace.inputs"}}' 2>/dev/null || true)
if [ "$have" = "$digest" ] && [ "${1:-}" != "--force" ]; then
    echo "image: $name:$version is up to date (inputs $digest)"
    exit 0
fi

t0=$(date +%s)
tmp=$(mktemp -d /var/tmp/rsttrace-image.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
tar_inputs | tar -x -C "$tmp/src"
# setup.sh runs with a clean environment: the build host's pip settings
# (local indexes, paths) mean nothing inside the new root. Only its proxy
# variables pass, and its certificate authorities as the secret build-ca
# (where a proxy intercepts TLS, pip must trust its authority), for the
# build alone.
envs=(PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root)
for v in http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY; do
    [ -n "${!v:-}" ] && envs+=("$v=${!v}")
done
mkdir "$tmp/secrets"
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca" ] && cp "$ca" "$tmp/secrets/build-ca"
# (merged /usr made by mmdebstrap's hook rather than the usrmerge package,
# which would leave perl in the image)
mmdebstrap --quiet --variant=minbase --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook="copy-in $tmp/src /tmp" \
    --customize-hook='mkdir -p "$1/run"' \
    --customize-hook="copy-in $tmp/secrets /run" \
    --customize-hook="chroot \"\$1\" env -i ${envs[*]} sh /tmp/src/deploy/image/setup.sh /tmp/src" \
    --customize-hook='rm -rf "$1/tmp/src" "$1/run/secrets"' \
    bookworm "$tmp/rootfs.tar" \
    "deb $mirror/debian bookworm main" \
    "deb $mirror/debian bookworm-updates main" \
    "deb $mirror/debian-security bookworm-security main"

old=$(podman image inspect "$name:$version" --format '{{.Id}}' 2>/dev/null || true)
changes=()
while IFS= read -r line; do
    changes+=(--change "$line")
done < <(grep -E '^(CMD|ENV|LABEL) ' "$here/Containerfile")
podman import --quiet "${changes[@]}" --change "LABEL rsttrace.inputs=$digest" \
    "$tmp/rootfs.tar" "$name:$version" >/dev/null
podman tag "$name:$version" "$name:latest"
# the image this one replaces, unless something still uses it
if [ -n "$old" ] && [ "$old" != "$(podman image inspect "$name:$version" --format '{{.Id}}')" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
fi
size=$(podman image inspect "$name:$version" --format '{{.Size}}')
echo "image: $name:$version and :latest, $((size / 1000000)) MB, built in $(( $(date +%s) - t0 )) s (inputs $digest)"
