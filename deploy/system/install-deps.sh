#!/usr/bin/env bash
# Install the system commands the test suite runs for real, each only when it is missing.
#
# Each needed command is checked on its own; only the Debian packages that provide the
# missing ones are installed. A command that is already there is never replaced: a
# NodeSource `nodejs` (which ships npm itself and conflicts with Debian's `npm`), a Java or
# a docker client from elsewhere stay as they are. apt-get runs with --no-remove, so an
# install that would remove or replace an installed package stops instead.
#
# Usage: deploy/system/install-deps.sh [--check]
#   --check   only report what is missing (exit 1 if anything is); install nothing.
# Exit 0 when every command (and data file) is present afterwards; otherwise one line per
# missing one, naming it and its Debian package, and exit 2.
set -uo pipefail

# command -> the Debian package that provides it:
#   prometheus, promtool  metrics tests (a real Prometheus server; rule and metric checks)
#   openssl               TLS certificates for the security tests
#   java                  TorchServe's frontend (side-by-side test)
#   node, npm             the Grafana dashboard's type-check
#   docker, dockerd       the container image test
#   debootstrap           the image's local base; this script's own test
# An entry that starts with / is a file or folder a data package provides:
#   /usr/share/datasets/fashion-mnist   the Fashion-MNIST benchmark's images
#   /usr/share/gimp/2.0/patterns        GIMP's texture patterns (the `textures` OOD set)
NEEDS=(
  "prometheus prometheus"
  "promtool prometheus"
  "openssl openssl"
  "java openjdk-17-jre-headless"
  "node nodejs"
  "npm npm"
  "docker docker.io"
  "dockerd docker.io"
  "debootstrap debootstrap"
  "/usr/share/datasets/fashion-mnist dataset-fashion-mnist"
  "/usr/share/gimp/2.0/patterns gimp-data"
)
# No special case for npm: a NodeSource node ships its own npm, so npm is only missing
# beside a Debian node, whose npm package then installs cleanly.

has() {
  if [[ "$1" == /* ]]; then [[ -e "$1" ]]; else command -v "$1" >/dev/null 2>&1; fi
}

report() {  # one line per missing command; $1 is appended to each
  local need cmd pkg
  for need in "${NEEDS[@]}"; do
    read -r cmd pkg <<<"$need"
    has "$cmd" || echo "system-deps: error: '$cmd' is missing (Debian package $pkg)$1" >&2
  done
}

missing_cmds=()
missing_pkgs=()
for need in "${NEEDS[@]}"; do
  read -r cmd pkg <<<"$need"
  has "$cmd" && continue
  missing_cmds+=("$cmd")
  [[ " ${missing_pkgs[*]-} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
done
((${#missing_cmds[@]} == 0)) && exit 0

if [[ "${1:-}" == "--check" ]]; then
  report ""
  exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
  report "; as root run: apt-get install --no-remove ${missing_pkgs[*]}"
  exit 2
fi

echo "system-deps: missing ${missing_cmds[*]}; installing ${missing_pkgs[*]}"
log="$(mktemp)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q && apt-get install -y -q --no-install-recommends --no-remove \
  -o Dpkg::Options::=--force-confold "${missing_pkgs[@]}"; } >"$log" 2>&1; then
  tail -n 15 "$log" >&2
fi
rm -f "$log"
report " and could not be installed"
for cmd in "${missing_cmds[@]}"; do
  has "$cmd" || exit 2
done
echo "system-deps: done"
