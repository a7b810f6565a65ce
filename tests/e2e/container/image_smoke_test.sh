#!/usr/bin/env bash
# Smoke test of the MemBroker image (scripts/container-image.sh builds it):
# a broker and two simulated agents on their own podman network, each on a
# read-only root filesystem as the image's non-root user; membrokerctl
# from the image lists every simulated VM as JSON; both kinds of /metrics
# answer (through ephemeral loopback ports); the image has no compiler;
# `podman stop` ends every daemon with exit code 0.
#   image_smoke_test.sh SOURCE_DIR
# Exit 77 (skipped) only when podman cannot run here.
set -euo pipefail
SRC="${1:?usage: image_smoke_test.sh SOURCE_DIR}"
source "$SRC/scripts/podman-env.sh"
IMAGE="${MB_IMAGE:-localhost/membroker:dev}"
if ! why=$(mb_podman_usable); then echo "SKIP: $why"; exit 77; fi
podman image exists "$IMAGE" || { echo "FAIL: no image $IMAGE (scripts/container-image.sh)"; exit 1; }

id="mb-smoke-$$"
net="$id-net"
fail() { echo "FAIL: $*"; for c in broker agent-1 agent-2; do echo "--- $c log"; podman logs "$id-$c" 2>&1 | tail -20; done; exit 1; }
cleanup() {
  podman rm -f -v -t 0 "$id-broker" "$id-agent-1" "$id-agent-2" >/dev/null 2>&1 || true
  podman network rm -f "$net" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Polls `cmd` until it succeeds or `seconds` pass.
wait_for() {
  local seconds=$1; shift
  local deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < deadline)) || return 1
    sleep 1
  done
}

# 1. The image: no compiler, binaries present, a numeric non-root user.
if podman run --rm --entrypoint /bin/sh "$IMAGE" -c \
    'for c in cc gcc g++ c++ clang cpp as ld make cmake; do command -v $c && exit 0; done; exit 1'; then
  fail "the image contains a compiler or build tool (above)"
fi
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[[ -n $user && ${user%%:*} != 0 && ${user%%:*} != root ]] || fail "image user is '$user', not a non-root user"

# 2. The broker and two simulated agents on a podman network (name DNS).
podman network create "$net" >/dev/null
podman run -d --name "$id-broker" --network "$net" --network-alias broker --read-only \
  -p 127.0.0.1::9470 "$IMAGE" \
  --listen=0.0.0.0:7070 --metrics-listen=0.0.0.0:9470 --state-dir=/var/lib/membroker --insecure >/dev/null
for n in 1 2; do
  podman run -d --name "$id-agent-$n" --network "$net" --read-only \
    -v "$SRC/deploy/sim:/etc/membroker/sim:ro" -p 127.0.0.1::9471 \
    --entrypoint /usr/local/bin/membroker-agent "$IMAGE" \
    --broker=broker:7070 --host-id="sim-$n" --backend=sim \
    --sim-config="/etc/membroker/sim/host-$n.textproto" --host-reserve-bytes=2GiB \
    --metrics-listen=0.0.0.0:9471 --insecure >/dev/null
done

# 3. Non-root and read-only, as running containers.
for c in broker agent-1 agent-2; do
  uid=$(podman exec "$id-$c" id -u) || fail "$c: exec failed"
  [[ $uid != 0 ]] || fail "$c runs as root"
  [[ $(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$id-$c") == true ]] || fail "$c: root fs not read-only"
  if podman exec "$id-$c" touch /usr/local/bin/probe 2>/dev/null; then fail "$c: wrote to the root filesystem"; fi
done

# 4. membrokerctl from the image sees every simulated VM, as JSON.
want=$(cat "$SRC/deploy/sim/host-1.textproto" "$SRC/deploy/sim/host-2.textproto" | grep -c '^ *name:' || true)
ctl() { podman run --rm --network "$net" --read-only --entrypoint /usr/local/bin/membrokerctl "$IMAGE" \
          --server=broker:7070 --insecure -o json "$@"; }
vms_listed() {
  ctl get vms | python3 -c '
import json, sys
vms = json.load(sys.stdin).get("vms", [])
hosts = {v.get("host_id") for v in vms}
sys.exit(0 if len(vms) == int(sys.argv[1]) and hosts == {"sim-1", "sim-2"} else 1)' "$want"
}
wait_for 60 vms_listed || { ctl get vms || true; fail "membrokerctl did not list the $want simulated VMs of sim-1 and sim-2"; }
echo "membrokerctl -o json get vms: $want VMs on sim-1 and sim-2"

# 5. /metrics of the broker and of both agents.
metrics_has() { # container port metric
  local hp
  hp=$(podman port "$1" "$2/tcp") || return 1
  curl -fsS --max-time 5 "http://$hp/metrics" | grep -q "^$3"
}
wait_for 30 metrics_has "$id-broker" 9470 'membroker_vm_target_bytes{' || fail "broker /metrics"
for n in 1 2; do
  wait_for 30 metrics_has "$id-agent-$n" 9471 'membroker_agent_broker_connected 1' || fail "agent-$n /metrics"
done
echo "/metrics answers on the broker and both agents"

# 6. A clean stop: SIGTERM, exit code 0 for every daemon.
for c in agent-1 agent-2 broker; do
  podman stop -t 20 "$id-$c" >/dev/null
  code=$(podman inspect --format '{{.State.ExitCode}}' "$id-$c")
  [[ $code == 0 ]] || fail "$c exited with $code after podman stop"
done
echo "clean stop: every daemon exited 0"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "PASS: image $IMAGE ($((size / 1000000)) MB)"
