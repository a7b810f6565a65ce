#!/usr/bin/env bash
# Builds the MemBroker image localhost/membroker:dev from a build tree's
# binaries (no compiler in the image, no compile in the build): the
# `runtime` stage of deploy/Dockerfile (cached by podman between runs),
# then deploy/Dockerfile.prebuilt with the three binaries stripped. Also
# builds the demo stack's Prometheus image from deploy/prometheus.
# Prints the build time and the image size. Dangling layers of earlier
# builds are pruned, so repeated runs do not grow the cache.
#   scripts/container-image.sh [BUILD_DIR]     (default: build)
# Exit 77 when podman cannot run here (ctest counts that as skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/podman-env.sh
BUILD_DIR="${1:-build}"
IMAGE="${MB_IMAGE:-localhost/membroker:dev}"

if ! why=$(mb_podman_usable); then
  echo "SKIP: $why"
  exit 77
fi
bins=("$BUILD_DIR/broker/membroker" "$BUILD_DIR/node-agent/membroker-agent"
      "$BUILD_DIR/client/membrokerctl")
for b in "${bins[@]}"; do
  [[ -x $b ]] || { echo "FAIL: $b is not built (build membroker membroker-agent membrokerctl)" >&2; exit 1; }
done

start=$(date +%s)
mb_base_image
base_done=$(date +%s)
podman build -q -f deploy/Dockerfile --target runtime -t localhost/membroker-runtime:dev deploy >/dev/null
ctx=$(mktemp -d /tmp/mb-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
for b in "${bins[@]}"; do strip -o "$ctx/$(basename "$b")" "$b"; done
podman build -q -f deploy/Dockerfile.prebuilt -t "$IMAGE" "$ctx" >/dev/null
podman build -q -f deploy/prometheus/Dockerfile -t localhost/membroker-prometheus:dev deploy/prometheus >/dev/null
podman image prune -f >/dev/null
end=$(date +%s)

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$MB_BASE_IMAGE")
echo "image $IMAGE: $((size / 1000000)) MB (base $MB_BASE_IMAGE $((base_size / 1000000)) MB)"
echo "image build took $((end - base_done)) s (base image: $((base_done - start)) s)"
