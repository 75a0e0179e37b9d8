#!/bin/bash
# PID 1 inside the test VM (started by /sbin/codejail-vm-init from the root fs).
# Smoke version: prove AppArmor enforces, then power off.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
t0=$(cut -d' ' -f1 /proc/uptime)
echo "vm-init: running at uptime ${t0}s"
mount -t securityfs securityfs /sys/kernel/security
mount -o remount,rw /
mkdir -p /mnt/out && mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out /mnt/out
echo "apparmor enabled: $(cat /sys/module/apparmor/parameters/enabled)"
cat > /tmp/smoke.profile <<'P'
abi <abi/3.0>,
profile smoke /usr/bin/cat {
  /usr/bin/cat mr,
  /usr/lib/** mr,
  /etc/ld.so.cache mr,
  /etc/hostname r,
}
P
apparmor_parser -r /tmp/smoke.profile && echo loaded
cat /etc/hostname && echo "allowed read ok"
cat /etc/passwd >/dev/null 2>&1 && echo "FAIL: read passwd allowed" || echo "denied read ok"
dmesg | grep 'apparmor="DENIED"'
echo 0 > /mnt/out/status
echo o > /proc/sysrq-trigger; sleep 30
