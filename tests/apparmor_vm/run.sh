#!/bin/bash
# `make test-apparmor`: prove apparmor/ profiles confine the service under a real
# AppArmor kernel. Boots Debian bookworm's own kernel under QEMU (software
# emulation, -accel tcg) on a cached debootstrap root fs, with vm-init.sh as
# init: it provisions with deploy/provision.sh (our Landlock/seccomp layer off),
# loads the profiles, starts the service and runs the live suite's
# deny/allow/support tests twice: with a fresh interpreter per run, and with the
# warm sandbox (runs forked by the slots' zygotes). Exit status: the suites'.
#
# Environment: CACHE_DIR (root fs + wheelhouse cache), VM_TIMEOUT (s, default
# 1500), VM_MEMORY (MiB, 3072), VM_PYTEST_ARGS (replace the -k selection;
# VM_WARM_PYTEST_ARGS for the warm pass alone),
# VM_CPU_LIMIT / VM_REALTIME_LIMIT (codejail limits in the VM, 4 / 4 s).
# The output of the last run stays in $CACHE_DIR/last-run/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export CACHE_DIR=${CACHE_DIR:-/var/cache/codejail-service/apparmor-vm}
VM_TIMEOUT=${VM_TIMEOUT:-1500}
VM_MEMORY=${VM_MEMORY:-3072}

log() { echo "[test-apparmor] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root (debootstrap, and the cache in /var/cache)"; exit 2; }
t_start=$(date +%s)

# Host tools: Debian packages, installed when missing (CI starts from a bare machine).
. "$here/../host-tools.sh"
ensure_tools test-apparmor debootstrap:debootstrap qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils \
    mke2fs:e2fsprogs apparmor_parser:apparmor -:python3-pip

# Fail fast on a profile that does not even compile.
"$here/compile-profiles.sh"

t0=$(date +%s)
rootfs=$("$here/build-rootfs.sh")
t_rootfs=$(( $(date +%s) - t0 ))
t0=$(date +%s)
wheels=$("$here/wheelhouse.sh")
t_wheels=$(( $(date +%s) - t0 ))

run=$CACHE_DIR/last-run
rm -rf "$run"
mkdir -p "$run/out"
# A throwaway overlay: the cached image is never written.
qemu-img create -q -f qcow2 -b "$rootfs/rootfs.ext4" -F raw "$run/disk.qcow2"

# Settings for vm-init.sh, which sources this file.
for var in VM_PYTEST_ARGS VM_WARM_PYTEST_ARGS VM_CPU_LIMIT VM_REALTIME_LIMIT; do
    if [ -n "${!var:-}" ]; then printf '%s=%q\n' "$var" "${!var}"; fi
done >"$run/out/vm.env"
# The VM has no network device at all; the checkout is shared read-only.
cmdline="root=/dev/vda rw console=ttyS0 init=/sbin/codejail-vm-init apparmor=1 security=apparmor"
cmdline+=" panic=-1 quiet loglevel=4 log_buf_len=8M"
log "booting $(cat "$rootfs/kernel-version") under qemu -accel tcg (console: $run/console.log)"
t0=$(date +%s)
set +e
timeout --foreground "$VM_TIMEOUT" qemu-system-x86_64 \
    -accel tcg -cpu max -smp 2 -m "$VM_MEMORY" \
    -nographic -no-reboot -nic none \
    -kernel "$rootfs/vmlinuz" -initrd "$rootfs/initrd.img" -append "$cmdline" \
    -drive "file=$run/disk.qcow2,if=virtio,format=qcow2,cache=unsafe" \
    -virtfs "local,path=$repo,mount_tag=src,security_model=none,readonly=on" \
    -virtfs "local,path=$wheels,mount_tag=wheels,security_model=none,readonly=on" \
    -virtfs "local,path=$run/out,mount_tag=out,security_model=none" \
    </dev/null 2>&1 | tee "$run/console.log" | grep --line-buffered -E '^\[vm |PASSED|FAILED|XFAIL|XPASS|ERROR|passed|failed|Traceback'
qemu_status=${PIPESTATUS[0]}
set -e
t_vm=$(( $(date +%s) - t0 ))

[ "$qemu_status" = 124 ] && log "the VM did not finish within ${VM_TIMEOUT}s"
status=$(cat "$run/out/status" 2>/dev/null || echo 98)
if [ -f "$run/out/audit-report.txt" ]; then
    echo
    cat "$run/out/audit-report.txt"
fi
echo
echo "Wall time: root fs ${t_rootfs}s, wheelhouse ${t_wheels}s, VM ${t_vm}s (boot to power-off), total $(( $(date +%s) - t_start ))s"
echo "In the VM:"
sed 's/^/    /' "$run/out/timings.txt" 2>/dev/null || true
for pass in pytest pytest-warm; do
    echo "$pass: $(grep -E '^(=+ .* in [0-9.]+s|[0-9]+ (passed|failed).*) ?=*$' "$run/out/$pass.txt" 2>/dev/null | tail -n1)"
done
log "output kept in $run/out/ (pytest.txt and pytest-warm.txt: fresh interpreters, warm sandbox;" \
    "audit-report.txt, dmesg.txt, service.log, service-warm.log)"
if [ "$status" != 0 ]; then
    log "FAILED (status $status)"
    exit 1
fi
log "passed"
