#!/bin/sh
# Fetches the Debian cloud kernel and the virtio balloon and virtio-mem
# modules that the QEMU end-to-end tests boot their guests with.
#
# Usage: scripts/fetch-guest-kernel.sh DIR
#
# Puts DIR/vmlinuz and DIR/{virtio_ring,virtio,virtio_pci_modern_dev,
# virtio_pci_legacy_dev,virtio_pci,virtio_balloon,virtio_mem}.ko. Idempotent: does
# nothing when they are all present. Needs apt-get (no root: it only
# downloads the package) and dpkg-deb.
set -eu

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_balloon virtio_mem"

complete=yes
[ -s "$dir/vmlinuz" ] || complete=no
for m in $modules; do
  [ -s "$dir/$m.ko" ] || complete=no
done
if [ "$complete" = yes ]; then
  echo "guest kernel already in $dir"
  exit 0
fi

mkdir -p "$dir"
work=$(mktemp -d)
chmod 755 "$work"  # apt-get download runs as _apt when it can
trap 'rm -rf "$work"' EXIT

# The meta package depends on exactly one versioned kernel package.
find_pkg() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n 1
}
pkg=$(find_pkg)
if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
  # A machine whose package lists were never fetched (or were cleaned).
  apt-get update -qq
  pkg=$(find_pkg)
fi
if [ -z "$pkg" ]; then
  echo "cannot find the kernel package linux-image-cloud-amd64 depends on" >&2
  exit 1
fi
echo "fetching $pkg"
(cd "$work" && apt-get download "$pkg" >/dev/null)
deb=$(ls "$work"/*.deb | head -n 1)
dpkg-deb -x "$deb" "$work/root"

vmlinuz=$(ls "$work"/root/boot/vmlinuz-* | head -n 1)
cp "$vmlinuz" "$dir/vmlinuz.tmp"
for m in $modules; do
  ko=$(find "$work/root/lib/modules" -name "$m.ko" | head -n 1)
  if [ -z "$ko" ]; then
    # Some kernels compress modules; accept .ko.xz too.
    kox=$(find "$work/root/lib/modules" -name "$m.ko.xz" | head -n 1)
    if [ -z "$kox" ]; then
      echo "module $m not found in $pkg" >&2
      exit 1
    fi
    xz -dc "$kox" >"$dir/$m.ko.tmp"
  else
    cp "$ko" "$dir/$m.ko.tmp"
  fi
done
# Rename last, so an interrupted run never leaves a half set that looks done.
for m in $modules; do
  mv "$dir/$m.ko.tmp" "$dir/$m.ko"
done
mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
echo "guest kernel in $dir: $(basename "$vmlinuz")"
