#!/bin/bash
# Build (or reuse) the Debian bookworm root file system that `make test-apparmor`
# boots under QEMU. The result is cached under $CACHE_DIR/rootfs-<hash>/, where
# <hash> covers this script: change the package list or the setup below and the
# next run rebuilds. Prints the cache directory on stdout.
#
# Output files: rootfs.ext4 (raw ext4 image, never written by a test run: runs
# boot a qcow2 overlay on top), vmlinuz, initrd.img.
set -euo pipefail

CACHE_DIR=${CACHE_DIR:-/var/cache/codejail-service/apparmor-vm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
IMAGE_SIZE=${IMAGE_SIZE:-6G}

# Debian's own kernel (AppArmor on by default), the AppArmor userland, and what
# deploy/provision.sh and the live suite need. Python packages come from a
# wheelhouse built on the host (see wheelhouse.sh): the VM has no network.
PACKAGES=(
    linux-image-amd64 initramfs-tools kmod udev
    apparmor apparmor-utils
    sudo procps findutils iproute2 passwd adduser libseccomp2
    python3.11 python3.11-venv python3-venv
    git make ca-certificates
)

log() { echo "[build-rootfs] $*" >&2; }

input_hash=$( { cat "$0"; echo "$MIRROR $SUITE $IMAGE_SIZE"; } | sha256sum | cut -c1-16)
out="$CACHE_DIR/rootfs-$input_hash"
if [[ -f "$out/complete" ]]; then
    log "cached root fs: $out"
    echo "$out"
    exit 0
fi

mkdir -p "$CACHE_DIR"
work=$(mktemp -d "$CACHE_DIR/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

start=$(date +%s)
log "debootstrap $SUITE from $MIRROR into $root (takes a few minutes)"
include=$(IFS=,; echo "${PACKAGES[*]}")
DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase \
    --include="$include" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" >&2
    exit 1
}

# Small image configuration; the test's init script does the rest at boot.
echo codejail-aa-vm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
# The VM is thrown away after each run: keep apt from leaving its archives.
chroot "$root" apt-get clean
# Load the 9p modules the init script uses to reach the checkout.
printf '9p\n9pnet_virtio\n' >>"$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all >>"$work/debootstrap.log" 2>&1
# PID 1 of the VM: mount the checkout (9p tag "src", read-only) and hand over
# to the test's own init script there, so editing that script needs no rebuild.
cat >"$root/sbin/codejail-vm-init" <<'INIT'
#!/bin/sh
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /mnt/src
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288 src /mnt/src; then
    exec /bin/bash /mnt/src/tests/apparmor_vm/vm-init.sh
fi
echo "codejail-vm-init: cannot mount the checkout" >&2
echo o >/proc/sysrq-trigger
INIT
chmod 755 "$root/sbin/codejail-vm-init"

kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -n1)
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
basename "$kernel" | sed 's/^vmlinuz-//' >"$work/kernel-version"

log "making ext4 image ($IMAGE_SIZE, sparse)"
truncate -s "$IMAGE_SIZE" "$work/rootfs.ext4"
mke2fs -q -t ext4 -L cjroot -d "$root" "$work/rootfs.ext4"
rm -rf "$root"

mv "$work/debootstrap.log" "$work/build.log"
echo "built $(date -u +%FT%TZ) in $(( $(date +%s) - start )) s" >"$work/complete"
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
# Older images (other inputs) only take space.
find "$CACHE_DIR" -maxdepth 1 -name 'rootfs-*' ! -path "$out" -exec rm -rf {} +
log "built root fs in $(( $(date +%s) - start )) s: $out"
echo "$out"
