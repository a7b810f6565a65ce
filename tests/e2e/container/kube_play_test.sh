#!/usr/bin/env bash
# The broker Deployment of deploy/kubernetes runs: `kubectl kustomize` of
# overlays/insecure-demo, its PersistentVolumeClaim and Deployment given to
# `podman kube play` (no cluster here; podman plays Deployments, not
# DaemonSets). Checked: the broker starts as user 10001 with its state on
# the claim's volume, and membrokerctl inside the pod reaches it.
#   kube_play_test.sh SOURCE_DIR
# Exit 77 (skipped) when podman cannot run or kubectl is not installed.
set -euo pipefail
SRC="${1:?usage: kube_play_test.sh SOURCE_DIR}"
source "$SRC/scripts/podman-env.sh"
if ! why=$(mb_podman_usable); then echo "SKIP: $why"; exit 77; fi
command -v kubectl >/dev/null || { echo "SKIP: kubectl is not installed (renders the kustomize overlay)"; exit 77; }
podman image exists localhost/membroker:dev || { echo "FAIL: no image localhost/membroker:dev"; exit 1; }

dir=$(mktemp -d /tmp/mb-kube.XXXXXX)
play="$dir/broker.yaml"
cleanup() {
  podman kube down "$play" >/dev/null 2>&1 || true
  podman volume rm -f membroker-state >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; podman logs membroker-pod-0-membroker 2>&1 | tail -20; exit 1; }

podman volume exists membroker-state && fail "a volume membroker-state exists already; not touching it"
kubectl kustomize "$SRC/deploy/kubernetes/overlays/insecure-demo" >"$dir/all.yaml"
# Keep the documents of kind PersistentVolumeClaim and Deployment.
awk -v RS='\n---\n' -v ORS='\n---\n' '/(^|\n)kind: (PersistentVolumeClaim|Deployment)\n/' "$dir/all.yaml" >"$play"
[[ $(grep -c '^kind:' "$play") == 2 ]] || fail "expected a PVC and a Deployment in the overlay"

podman kube play "$play" >/dev/null || fail "podman kube play"
c=membroker-pod-0-membroker
deadline=$(($(date +%s) + 60))
until podman logs "$c" 2>&1 | grep -q 'membroker listening on grpc port 7070'; do
  (($(date +%s) < deadline)) || fail "the broker did not start"
  sleep 1
done
[[ $(podman exec "$c" id -u) == 10001 ]] || fail "the broker does not run as 10001"
podman exec "$c" membrokerctl --insecure -o json get hosts | grep -q '"hosts"' || fail "membrokerctl in the pod"
podman exec "$c" sh -c 'ls /var/lib/membroker | grep -q .' || fail "no state in the claim's volume"
echo "PASS: broker Deployment played with podman kube play"
