#!/usr/bin/env bash
# Installs the Debian 12 packages MemBroker needs, only those missing.
#   scripts/deps.sh build   -- compilers and libraries
#   scripts/deps.sh test    -- build + what the tests drive (QEMU, busybox,
#                              Prometheus/promtool, libvirt's test driver
#                              and a real libvirtd with its QEMU driver,
#                              podman and podman-compose, debootstrap for the
#                              image's base, systemd-analyze, openssl for
#                              scripts/dev-ca.sh, python3-grpcio for the
#                              outside security suite)
#   scripts/deps.sh container -- only the container tools
set -euo pipefail

BUILD_PKGS=(
  g++ cmake ninja-build pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev
  libvirt-dev libsqlite3-dev libspdlog-dev libyaml-cpp-dev
)
TEST_PKGS=(
  qemu-system-x86 busybox-static cpio prometheus curl python3 systemd
  openssl python3-grpcio python3-protobuf
  clang libclang-rt-14-dev
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
)
# podman as ENVIRONMENT.md describes it (runc, netavark with name DNS).
CONTAINER_PKGS=(
  podman runc uidmap slirp4netns fuse-overlayfs netavark aardvark-dns
  containernetworking-plugins iptables catatonit debootstrap podman-compose binutils
)

case "${1:-build}" in
  build) want=("${BUILD_PKGS[@]}") ;;
  test) want=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}" "${CONTAINER_PKGS[@]}") ;;
  container) want=("${CONTAINER_PKGS[@]}") ;;
  *) echo "usage: scripts/deps.sh [build|test|container]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "installing: ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# prometheus pulls in a service we do not want started at install time.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
