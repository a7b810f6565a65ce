#!/usr/bin/env bash
# Checks deploy/systemd: `systemd-analyze verify` accepts both units (run on
# copies whose ExecStart names the built binaries), their ExecStart flags
# exist in the binaries' --help, the units have what operators rely on
# (Restart=on-failure, an EnvironmentFile, a dedicated user, libvirt
# ordering for the agent, no capability), and `systemd-analyze security`
# rates each at most MAX_EXPOSURE (printed; the README quotes them).
#   systemd_check.sh SOURCE_DIR BROKER_BIN AGENT_BIN
# Exit 77 (skipped) when systemd-analyze is not installed.
set -euo pipefail
src=${1:?usage}; broker=$(realpath "${2:?usage}"); agent=$(realpath "${3:?usage}")
MAX_EXPOSURE=2.0
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "SKIP: systemd-analyze not installed (Debian package systemd)"; exit 77
fi
dir=$(mktemp -d /tmp/mb-systemd.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

for unit in membroker.service membroker-agent.service; do
  f="$src/deploy/systemd/$unit"
  grep -q '^Restart=on-failure$' "$f" || fail "$unit: no Restart=on-failure"
  grep -q '^EnvironmentFile=' "$f" || fail "$unit: no EnvironmentFile="
  grep -Eq '^(DynamicUser=yes|User=.+)$' "$f" || fail "$unit: no dedicated user"
  grep -q '^CapabilityBoundingSet=$' "$f" || fail "$unit: keeps capabilities"
  grep -q '^NoNewPrivileges=yes$' "$f" || fail "$unit: no NoNewPrivileges"
  sed -e "s#/usr/local/bin/membroker-agent#$agent#" -e "s#/usr/local/bin/membroker #$broker #" \
      -e "s#/usr/local/bin/membroker\$#$broker#" "$f" >"$dir/$unit"
done
for w in libvirtd.service virtqemud.service; do
  grep -E '^After=.*'"$w" "$src/deploy/systemd/membroker-agent.service" >/dev/null ||
    fail "membroker-agent.service: not After=$w"
done

# Every --flag of ExecStart (continuation lines included) is in --help.
check_flags() { # unit binary
  local help flags
  help=$("$2" --help 2>&1 || true)
  flags=$(sed -n '/^ExecStart=/,/^[^ ]/p' "$src/deploy/systemd/$1" | grep -o -- '--[a-z0-9-]*' | sort -u)
  [[ -n $flags ]] || fail "$1: no flags found in ExecStart"
  for fl in $flags; do
    local name=${fl#--}
    grep -Eq -- "-(-)?${name//-/[-_]}[ =:]" <<<"$help" || fail "$1: $fl is not in $(basename "$2") --help"
  done
}
check_flags membroker.service "$broker"
check_flags membroker-agent.service "$agent"

if ! out=$(cd "$dir" && systemd-analyze verify ./membroker.service ./membroker-agent.service 2>&1); then
  fail "systemd-analyze verify: $out"
elif [[ -n $out ]]; then
  fail "systemd-analyze verify warns: $out"
fi
for unit in membroker.service membroker-agent.service; do
  line=$(cd "$dir" && systemd-analyze security --offline=true "./$unit" 2>&1 | grep 'Overall exposure level') ||
    { fail "$unit: systemd-analyze security printed no exposure"; continue; }
  score=$(sed -E 's/.*: ([0-9.]+) .*/\1/' <<<"$line")
  echo "$unit: exposure $score (systemd-analyze security)"
  awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' || fail "$unit: exposure $score above $MAX_EXPOSURE"
done
((fails == 0)) || exit 1
echo PASS
