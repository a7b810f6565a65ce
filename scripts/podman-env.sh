# Sourced by the container scripts and tests: podman's settings for these
# machines and two helpers. Not executable on its own.
#   mb_podman_usable   -- 0 when podman can run a container here
#   mb_base_image      -- makes localhost/debian:bookworm when absent
MB_SOURCE_DIR="${MB_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
# Hybrid cgroups and capped rlimits: runc, cgroupfs, file events, ulimits.
export CONTAINERS_CONF="${CONTAINERS_CONF:-$MB_SOURCE_DIR/deploy/ci/containers.conf}"
MB_BASE_IMAGE=localhost/debian:bookworm

# Prints why podman cannot run and returns 1, or returns 0.
mb_podman_usable() {
  if ! command -v podman >/dev/null 2>&1; then
    echo "podman is not installed (scripts/deps.sh container installs it)"
    return 1
  fi
  local out
  if ! out=$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>&1); then
    echo "podman cannot run here: $out"
    return 1
  fi
  return 0
}

# The Debian mirror apt uses: the first URIs: of Debian's own sources.
mb_debian_mirror() {
  local f=/etc/apt/sources.list.d/debian.sources uri=""
  if [[ -f $f ]]; then uri=$(awk '/^URIs:/ {print $2; exit}' "$f"); fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# Creates localhost/debian:bookworm with debootstrap (minbase) when absent.
mb_base_image() {
  if podman image exists "$MB_BASE_IMAGE"; then return 0; fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "debootstrap is missing (scripts/deps.sh container installs it)" >&2
    return 1
  fi
  local dir
  dir=$(mktemp -d /tmp/mb-bookworm.XXXXXX)
  echo "making $MB_BASE_IMAGE with debootstrap from $(mb_debian_mirror)"
  if ! debootstrap --variant=minbase bookworm "$dir" "$(mb_debian_mirror)" >"$dir.log" 2>&1; then
    tail -20 "$dir.log" >&2
    rm -rf "$dir" "$dir.log"
    return 1
  fi
  # Slim it before import (layers only add): no package caches or lists
  # (every Dockerfile runs apt-get update), no docs but copyrights, no man
  # pages or translations, and dpkg told to skip them in later installs.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin "$dir"/var/lib/apt/lists/* \
    "$dir"/usr/share/man/* "$dir"/usr/share/locale/* "$dir"/usr/share/info/*
  find "$dir/usr/share/doc" -type f ! -name copyright -delete
  cat >"$dir/etc/dpkg/dpkg.cfg.d/01-slim" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/info/*
CFG
  tar -C "$dir" -c . | podman import - "$MB_BASE_IMAGE" >/dev/null
  local rc=$?
  rm -rf "$dir" "$dir.log"
  return $rc
}
