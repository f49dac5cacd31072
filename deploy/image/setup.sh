#!/bin/sh
# Makes a Debian 12 root file system into the rsttrace image. Runs inside
# that root, as root, in both builds: build.sh (mmdebstrap's customize hook,
# no registry) and the Containerfile (a RUN on debian:bookworm-slim).
# Argument: the directory holding the source tree (the paths
# Containerfile.dockerignore lets in); only read.
set -eu
src=${1:?usage: setup.sh SOURCE_DIR}
here=$src/deploy/image
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
# A build behind a proxy that intercepts TLS hands its authority in as the
# secret build-ca, for this build's downloads only (it is not kept).
if [ -s /run/secrets/build-ca ]; then
    export PIP_CERT=/run/secrets/build-ca
fi

# no documentation, manual pages or translations in anything installed
cp "$here/dpkg-slim.cfg" /etc/dpkg/dpkg.cfg.d/rsttrace-slim
rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/*

# packages.txt: "NAME" lines are installed, "unpack: NAME" lines unpacked
list() { sed -e 's/#.*//' "$here/packages.txt" | awk -v want="$1" '
    NF == 0 { next }
    $1 == "unpack:" { if (want == "unpack") print $2; next }
    want == "install" { print $1 }'; }

apt-get update -qq
# shellcheck disable=SC2046  # one word per package
apt-get install -y -qq --no-install-recommends $(list install) >/dev/null

# The header packages and the linux-headers-* packages they depend on (the
# versioned arch and -common ones), unpacked without their other Depends.
# Only their /usr/src is kept: the /lib/modules/VERSION/build link they
# carry names Debian's kernel, never the running one (rsttrace links the
# running kernel's name to them when it starts), and unpacking ./lib over a
# merged-/usr root would replace its /lib link with a directory.
headers=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
          --no-breaks --no-replaces --no-enhances $(list unpack) |
          grep -E '^linux-headers-' | sort -u)
debs=$(mktemp -d)
chown _apt "$debs"   # apt downloads as _apt
(cd "$debs" && apt-get download -qq $headers)
for deb in "$debs"/*.deb; do
    dpkg-deb -x "$deb" "$debs/root"
done
# bcc compiles for the machine it runs on, and the image is amd64's:
# the other architectures' headers go
find "$debs"/root/usr/src/linux-headers-*/arch -mindepth 1 -maxdepth 1 \
    ! -name x86 -exec rm -rf {} +
cp -a "$debs/root/usr/src/." /usr/src/
rm -rf "$debs"

# rsttrace in a virtual environment that sees Debian's bcc, as on a host
# (scripts/install.sh); its Python dependencies are wheels, pinned
# (pip builds in the source tree: a copy, the original may be read-only)
python3 -m venv --system-site-packages /opt/rsttrace
build=$(mktemp -d)
cp -r "$src/." "$build"
/opt/rsttrace/bin/pip install -q --no-cache-dir --disable-pip-version-check \
    -c "$here/constraints.txt" "$build"
rm -rf "$build"
ln -s /opt/rsttrace/bin/rsttrace /usr/local/bin/rsttrace
/opt/rsttrace/bin/pip uninstall -q -y pip setuptools

# what was needed only to build: the venv module and its wheels, apt's
# lists and caches, the libraries' own test suites
# (what a remaining package only suggests goes too: python3.11 suggests
# python3.11-venv)
apt-get purge -y -qq python3-venv >/dev/null
apt-get autoremove -y -qq --purge -o APT::AutoRemove::SuggestsImportant=false \
    -o APT::AutoRemove::RecommendsImportant=false >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
       /var/log/apt /var/log/dpkg.log /var/log/alternatives.log
find /opt/rsttrace/lib -depth -type d -name tests \
    -path '*/site-packages/*/*' -exec rm -rf {} +
rm -rf /root/.cache
