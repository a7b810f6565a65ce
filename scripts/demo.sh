#!/usr/bin/env bash
# A local MemBroker cluster on the simulator: installs what is missing,
# builds, starts the broker and three simulated hosts (idle, steady, bursty,
# diurnal and growing VMs), and shows the fleet converging until Ctrl-C.
# Without a terminal it prints a plain table every few seconds instead.
# Plaintext (--insecure) by default; MB_DEMO_TLS=1 runs it with mutual TLS
# and certificates from scripts/dev-ca.sh instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
scripts/deps.sh build
scripts/build.sh membroker membroker-agent membrokerctl
BIN="$ROOT/${BUILD_DIR:-build}"
BROKER="$BIN/broker/membroker"
AGENT="$BIN/node-agent/membroker-agent"
CTL="$BIN/client/membrokerctl"
PORT="${MB_DEMO_PORT:-7070}"
METRICS_PORT="${MB_DEMO_METRICS_PORT:-9470}"
RUN_DIR=$(mktemp -d /tmp/membroker-demo.XXXXXX)
pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "stopped the demo cluster; logs are in $RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Transport security: --insecure, or per-binary TLS flags (MB_DEMO_TLS=1).
broker_sec=(--insecure)
ctl_sec=(--insecure)
agent_sec() { echo --insecure; }
if [[ "${MB_DEMO_TLS:-0}" == 1 ]]; then
  PKI="$RUN_DIR/pki"
  scripts/dev-ca.sh "$PKI" sim-host-a sim-host-b sim-host-c
  broker_sec=(--tls-cert="$PKI/broker.pem" --tls-key="$PKI/broker-key.pem" --tls-ca="$PKI/ca.pem")
  agent_sec() {
    echo --tls-cert="$PKI/host-$1.pem" --tls-key="$PKI/host-$1-key.pem" --tls-ca="$PKI/ca.pem"
  }
  export MEMBROKER_TLS_CA="$PKI/ca.pem" MEMBROKER_TLS_CERT="$PKI/admin.pem"
  export MEMBROKER_TLS_KEY="$PKI/admin-key.pem"
  ctl_sec=()
fi

"$BROKER" --listen=127.0.0.1:$PORT --metrics-listen=127.0.0.1:$METRICS_PORT \
  --state-dir="$RUN_DIR/state" "${broker_sec[@]}" >"$RUN_DIR/broker.log" 2>&1 &
pids+=($!)
export MEMBROKER_SERVER=127.0.0.1:$PORT
for i in $(seq 1 50); do
  if "$CTL" "${ctl_sec[@]}" get hosts >/dev/null 2>&1; then break; fi
  if ! kill -0 "${pids[0]}" 2>/dev/null; then cat "$RUN_DIR/broker.log"; exit 1; fi
  sleep 0.1
done
caps=(10GiB 9GiB 8GiB)
n=0
for host in a b c; do
  mport=$((METRICS_PORT + 1 + n))
  "$AGENT" --broker=127.0.0.1:$PORT --host-id=sim-host-$host --backend=sim \
    --sim-config="$ROOT/scripts/demo/host-$host.textproto" \
    --host-capacity-bytes="${caps[$n]}" --metrics-listen=127.0.0.1:$mport \
    $(agent_sec "sim-host-$host") >"$RUN_DIR/agent-$host.log" 2>&1 &
  pids+=($!)
  n=$((n + 1))
done
cat <<MSG
MemBroker demo: broker on 127.0.0.1:$PORT (metrics :$METRICS_PORT), three simulated hosts
(agent metrics :$((METRICS_PORT + 1))..:$((METRICS_PORT + 3))). Logs: $RUN_DIR
Try in another terminal:  export MEMBROKER_SERVER=127.0.0.1:$PORT${PKI:+ MEMBROKER_TLS_CA=$PKI/ca.pem
  MEMBROKER_TLS_CERT=$PKI/admin.pem MEMBROKER_TLS_KEY=$PKI/admin-key.pem}
  $CTL ${ctl_sec[*]:-} get vms        $CTL ${ctl_sec[*]:-} explain vm app-growing
Ctrl-C stops everything.
MSG
if [[ -t 1 ]]; then
  "$CTL" "${ctl_sec[@]}" top --interval=1s
else
  "$CTL" "${ctl_sec[@]}" top --interval=${MB_DEMO_INTERVAL:-5s} ${MB_DEMO_ITERATIONS:+--iterations=$MB_DEMO_ITERATIONS}
fi
