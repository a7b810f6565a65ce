#!/usr/bin/env bash
# A real Prometheus (Debian's `prometheus` package) scrapes the broker and a
# simulated agent on loopback; the test queries its HTTP API until both
# daemons' series arrive: per-VM targets from the broker, reports sent from
# the agent, and the decision latency histogram.
#   prometheus_scrape_test.sh BROKER_BIN AGENT_BIN SIM_CONFIG
set -euo pipefail
BROKER=$1 AGENT=$2 SIM=$3
PROMETHEUS=$(command -v prometheus || true)
if [[ -z "$PROMETHEUS" ]]; then
  echo "FAIL: prometheus is not installed (scripts/deps.sh test installs it)"
  exit 1
fi
DIR=$(mktemp -d /tmp/mb-prom-e2e.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$DIR"/*.log; do echo "---- $f"; tail -n 30 "$f"; done
  exit 1
}
# Waits up to $2 seconds for a regex's first group in file $1.
wait_log() {
  local file=$1 secs=$2 re=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    if [[ -f "$file" ]] && [[ $(cat "$file") =~ $re ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

"$BROKER" --listen=127.0.0.1:0 --metrics-listen=127.0.0.1:0 --state-dir="$DIR/state" \
  --insecure >"$DIR/broker.log" 2>&1 &
pids+=($!)
ports=$(wait_log "$DIR/broker.log" 20 'grpc port ([0-9]+, metrics port [0-9]+)') || fail "broker did not start"
grpc_port=${ports%%,*}
broker_metrics=${ports##* }
"$AGENT" --broker=127.0.0.1:$grpc_port --host-id=prom-host --backend=sim --sim-config="$SIM" \
  --host-capacity-bytes=8GiB --metrics-listen=127.0.0.1:0 --insecure >"$DIR/agent.log" 2>&1 &
pids+=($!)
agent_metrics=$(wait_log "$DIR/agent.log" 20 'metrics on[^0-9]*port ([0-9]+)') || fail "agent did not start"

cat >"$DIR/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: membroker
    static_configs:
      - targets: ['127.0.0.1:$broker_metrics']
  - job_name: membroker-agent
    static_configs:
      - targets: ['127.0.0.1:$agent_metrics']
YML
# Prometheus needs a fixed port: try a few random high ones.
prom_port=""
for attempt in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 40000))
  "$PROMETHEUS" --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/tsdb" \
    --web.listen-address=127.0.0.1:$port >"$DIR/prometheus.log" 2>&1 &
  pid=$!
  if wait_log "$DIR/prometheus.log" 15 '(Server is ready to receive web requests)' >/dev/null; then
    pids+=($pid)
    prom_port=$port
    break
  fi
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
done
[[ -n "$prom_port" ]] || fail "prometheus did not start"

query() {
  curl -sf --max-time 5 "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" || true
}
# Waits until a query returns at least one sample.
expect_series() {
  local q=$1 i out
  for ((i = 0; i < 60; i++)); do
    out=$(query "$q")
    if [[ "$out" == *'"status":"success"'* && "$out" == *'"result":[{'* ]]; then
      echo "ok: $q"
      return 0
    fi
    sleep 1
  done
  fail "no samples for $q (last answer: ${out:-none})"
}
expect_series 'membroker_vm_target_bytes{host="prom-host",vm="etl-step"}'
expect_series 'membroker_host_capacity_bytes{host="prom-host"} == 8589934592'
expect_series 'up{job="membroker-agent"} == 1'
expect_series 'membroker_agent_reports_sent_total > 0'
expect_series 'membroker_decision_latency_seconds_count > 0'
expect_series 'sum(membroker_vm_target_bytes{host="prom-host"}) <= 8589934592'
echo "1 passed, 0 failed"
