#!/usr/bin/env bash
# Install the system commands the test suite runs for real, each only when it is missing.
#
# Each needed command is checked on its own; only the Debian packages that provide the
# missing ones are installed. A command that is already there is never replaced: a
# NodeSource `nodejs` (which ships npm itself and conflicts with Debian's `npm`), a Java
# from elsewhere, a docker-ce `docker`/`dockerd` stay as they are. apt-get runs with
# --no-remove, so an install that would remove or replace anything stops instead.
#
# Usage: deploy/system/install-deps.sh [--check]
#   --check   only report what is missing (exit 1 if anything is); install nothing.
# Environment:
#   SYSTEM_DEPS_ROOT  run every check and install inside this root (chroot); for tests.
#
# Exit 0 when every command is present afterwards; otherwise one line per missing command,
# naming it and its package, and exit 2.
set -uo pipefail

# command -> Debian package that provides it (the lines below are the whole contract).
#   prometheus, promtool  metrics tests (a real Prometheus server, rule and metric checks)
#   openssl               TLS certificates for the security tests
#   java                  TorchServe's frontend (side-by-side test)
#   node, npm             the Grafana dashboard's type-check
#   docker, dockerd       the container image test
#   debootstrap           the image's local base and the install test's throwaway root
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
)

ROOT="${SYSTEM_DEPS_ROOT:-}"
CHECK_ONLY=0
[[ "${1:-}" == "--check" ]] && CHECK_ONLY=1

in_root() {
  if [[ -n "$ROOT" ]]; then
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      DEBIAN_FRONTEND=noninteractive "$@"
  else
    DEBIAN_FRONTEND=noninteractive "$@"
  fi
}

has() { in_root sh -c "command -v '$1'" >/dev/null 2>&1; }

missing_cmds=()
missing_pkgs=()
for need in "${NEEDS[@]}"; do
  read -r cmd pkg <<<"$need"
  has "$cmd" && continue
  # No special case for npm: a NodeSource node ships its own npm, so npm is only missing
  # beside a Debian node, whose npm package then installs cleanly.
  missing_cmds+=("$cmd")
  [[ " ${missing_pkgs[*]-} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
done

if ((${#missing_cmds[@]} == 0)); then
  exit 0
fi

report() {
  for need in "${NEEDS[@]}"; do
    read -r cmd pkg <<<"$need"
    has "$cmd" || echo "system-deps: error: '$cmd' is missing (Debian package $pkg)$1" >&2
  done
}

if ((CHECK_ONLY)); then
  report ""
  exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
  report "; as root run: apt-get install --no-remove ${missing_pkgs[*]}"
  exit 2
fi

echo "system-deps: missing ${missing_cmds[*]}; installing ${missing_pkgs[*]}"
log="$(mktemp)"
# Java's post-install links need /proc inside a root.
mounted=0
if [[ -n "$ROOT" ]] && ! mountpoint -q "$ROOT/proc"; then
  mount -t proc proc "$ROOT/proc" && mounted=1
fi
in_root apt-get update -q >"$log" 2>&1 \
  && in_root apt-get install -y -q --no-install-recommends --no-remove \
    -o Dpkg::Options::=--force-confold "${missing_pkgs[@]}" >>"$log" 2>&1
rc=$?
((mounted)) && umount "$ROOT/proc"
if ((rc != 0)); then
  tail -n 20 "$log" >&2
fi
rm -f "$log"
report " and could not be installed"
for need in "${NEEDS[@]}"; do
  read -r cmd _ <<<"$need"
  has "$cmd" || exit 2
done
echo "system-deps: done"
