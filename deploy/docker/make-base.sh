#!/usr/bin/env bash
# Build the image's base locally: a minimal Debian bookworm root filesystem with
# Python 3.11 + venv, made with debootstrap and loaded with `docker import`.
# No registry is needed (the Dockerfile starts FROM this tag).
#
# Usage: deploy/docker/make-base.sh [TAG]        (as root: debootstrap and chroot need it)
# Environment:
#   BASE_TAG                tag to create (default gradsentry-base:bookworm; TAG wins)
#   DEBIAN_MIRROR           Debian archive (default http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR  security archive (default http://deb.debian.org/debian-security)
#   DOCKER                  docker client to use (default docker; honours DOCKER_HOST)
set -euo pipefail

TAG="${1:-${BASE_TAG:-gradsentry-base:bookworm}}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
DOCKER="${DOCKER:-docker}"
# What the image needs at run time: the interpreter, venv (ensurepip) for the build stage,
# and CA certificates for TLS clients.
PACKAGES=(python3.11 python3.11-venv ca-certificates)

die() {
  echo "make-base: error: $*" >&2
  exit 2
}

[[ "$(id -u)" -eq 0 ]] || die "run as root (debootstrap and chroot need it)"
command -v debootstrap >/dev/null || die "debootstrap not found (make system-deps installs it)"
command -v "$DOCKER" >/dev/null || die "$DOCKER not found (make system-deps installs docker.io)"
"$DOCKER" version >/dev/null 2>&1 || die "no Docker daemon answers (start dockerd first)"

workdir="$(mktemp -d)"
rootfs="$workdir/rootfs"
cleanup() {
  # A failed chroot step can leave /proc mounted inside the tree; never delete through it.
  if mountpoint -q "$rootfs/proc" 2>/dev/null; then umount "$rootfs/proc" || true; fi
  rm -rf --one-file-system "$workdir"
}
trap cleanup EXIT

echo "make-base: debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$workdir/debootstrap.log" 2>&1 \
  || { tail -n 30 "$workdir/debootstrap.log" >&2; die "debootstrap failed"; }

cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# Keep the image small: no recommends, no docs/man pages/locales from later installs.
cat >"$rootfs/etc/apt/apt.conf.d/90gradsentry" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90gradsentry-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
EOF
# No daemon may start inside the chroot during package configuration.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"

echo "make-base: installing ${PACKAGES[*]} (with $SUITE-updates and -security)"
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  sh -ec "apt-get update -q
          apt-get -y -q -o Dpkg::Options::=--force-confold dist-upgrade
          apt-get install -y -q ${PACKAGES[*]}
          apt-get clean" >"$workdir/apt.log" 2>&1 \
  || { tail -n 30 "$workdir/apt.log" >&2; die "installing packages in the root filesystem failed"; }
umount "$rootfs/proc"

# Drop what a container never uses: package lists, caches, logs, docs, debootstrap's notes.
rm -f "$rootfs/usr/sbin/policy-rc.d"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
  "$rootfs"/tmp/* "$rootfs"/debootstrap
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/man" "$rootfs/usr/share/info" "$rootfs/usr/share/locale" \
  -mindepth 1 -delete 2>/dev/null || true

chroot "$rootfs" /usr/bin/python3.11 -c 'import ensurepip, ssl, venv' \
  || die "python3.11 with venv and ssl does not run in the root filesystem"

echo "make-base: importing as $TAG"
tar --numeric-owner -C "$rootfs" -c . | "$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "Debian $SUITE minbase + ${PACKAGES[*]} (debootstrap)" \
  - "$TAG" >/dev/null
echo "make-base: done: $TAG ($("$DOCKER" image inspect -f '{{.Size}}' "$TAG") bytes)"
