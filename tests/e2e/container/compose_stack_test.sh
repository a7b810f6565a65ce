#!/usr/bin/env bash
# The demo stack of deploy/docker-compose.yml comes up with podman-compose:
# the broker, three simulated agents and Prometheus. Checked through
# Prometheus' HTTP API: every scrape target is up, and
# membroker_vm_target_bytes has a series for every VM of deploy/sim.
# Host ports are ephemeral (MB_*_PORT set empty), the project name unique.
#   compose_stack_test.sh SOURCE_DIR
# Exit 77 (skipped) only when podman cannot run here.
set -euo pipefail
SRC="${1:?usage: compose_stack_test.sh SOURCE_DIR}"
source "$SRC/scripts/podman-env.sh"
if ! why=$(mb_podman_usable); then echo "SKIP: $why"; exit 77; fi
command -v podman-compose >/dev/null || { echo "FAIL: podman-compose missing (scripts/deps.sh container)"; exit 1; }
for i in localhost/membroker:dev localhost/membroker-prometheus:dev; do
  podman image exists "$i" || { echo "FAIL: no image $i (scripts/container-image.sh)"; exit 1; }
done

export MB_BROKER_PORT="" MB_BROKER_METRICS_PORT="" MB_PROMETHEUS_PORT=""
project="mbcompose$$"
compose() { podman-compose -p "$project" -f "$SRC/deploy/docker-compose.yml" "$@"; }
cleanup() {
  # The containers with their anonymous volumes, then the named ones.
  podman ps -aq --filter "label=io.podman.compose.project=$project" | xargs -r podman rm -f -v -t 0 >/dev/null 2>&1 || true
  compose down -v >/dev/null 2>&1 || true
  podman network rm -f "${project}_default" >/dev/null 2>&1 || true
}
fail() {
  echo "FAIL: $*"
  for c in $(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}'); do
    echo "--- $c"; podman logs "$c" 2>&1 | tail -15
  done
  exit 1
}
trap cleanup EXIT

compose up -d >"/tmp/$project.up.log" 2>&1 || { cat "/tmp/$project.up.log"; fail "podman-compose up"; }
rm -f "/tmp/$project.up.log"
running=$(podman ps --filter "label=io.podman.compose.project=$project" --format '{{.Names}}' | sort)
echo "running: $(echo $running)"
[[ $(echo "$running" | wc -l) == 5 ]] || fail "expected 5 running containers"
prom=$(podman port "${project}_prometheus_1" 9090/tcp) || fail "no Prometheus port"

# The VMs of the simulated hosts, "host vm" per line (agent-N runs host-N).
want=$(for n in 1 2 3; do
  grep '^ *name:' "$SRC/deploy/sim/host-$n.textproto" | sed -E "s/.*\"(.*)\".*/sim-$n \\1/"
done | sort)

query() { curl -fsS --max-time 5 "http://$prom/api/v1/$1" "${@:2}"; }
targets_up() {
  query targets | python3 -c '
import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
print(" ".join("%s=%s" % (x["labels"]["instance"], x["health"]) for x in t))
sys.exit(0 if len(t) == 4 and all(x["health"] == "up" for x in t) else 1)'
}
vm_series() {
  query query --data-urlencode 'query=membroker_vm_target_bytes' | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
print("\n".join(sorted("%s %s" % (x["metric"]["host"], x["metric"]["vm"]) for x in r)))'
}

deadline=$(($(date +%s) + 120))
until out=$(targets_up 2>&1); do
  (($(date +%s) < deadline)) || fail "scrape targets not all up: $out"
  sleep 2
done
echo "targets: $out"
until [[ "$(vm_series 2>/dev/null)" == "$want" ]]; do
  (($(date +%s) < deadline)) || fail "membroker_vm_target_bytes series: got [$(vm_series)] want [$want]"
  sleep 2
done
echo "membroker_vm_target_bytes: $(echo "$want" | wc -l) series, one per simulated VM"
echo PASS
