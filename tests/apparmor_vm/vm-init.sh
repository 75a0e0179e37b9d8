#!/bin/bash
# PID 1 of the AppArmor test VM (started by /sbin/codejail-vm-init, see
# build-rootfs.sh). Provisions with deploy/provision.sh, our Landlock/seccomp
# layer off, loads apparmor/ profiles, starts the service confined by them,
# runs the live suite's deny/allow/support tests, and leaves on the "out" share:
#   status            pytest's exit status (or the failing step's), last thing written
#   pytest.txt        the suite's output, fresh interpreters (CODEJAIL_WARM_SANDBOX: false)
#   pytest-warm.txt   again, runs forked by the slots' zygotes (the default)
#   audit-report.txt  which AppArmor record came from which test
#   dmesg.txt service.log timeline.jsonl provision.log timings.txt
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
out=/mnt/out
repo=/work/main

say() { echo "[vm $(cut -d' ' -f1 /proc/uptime)s] $*"; }
power_off() {
    sync
    echo o >/proc/sysrq-trigger
    sleep 60
}
fail() {  # status message
    say "FAILED: $2"
    echo "$1" >"$out/status"
    power_off
}
now() { date +%s.%N; }
# A phase's span on the timeline, so audit_report.py can name its records.
phase_start=
phase() {  # name
    phase_start=$(now)
    phase_name=$1
    say "--- $1"
    echo "codejail-vm: phase $1" >/dev/kmsg
}
phase_done() {  # outcome
    local end
    end=$(now)
    printf '{"name": "phase: %s", "start": %s, "end": %s, "outcome": "%s"}\n' \
        "$phase_name" "$phase_start" "$end" "$1" >>"$out/timeline.jsonl"
    awk -v n="$phase_name" -v a="$phase_start" -v b="$end" 'BEGIN { printf "%-32s %6.1f s\n", n, b - a }' >>"$out/timings.txt"
}

# --- The machine -------------------------------------------------------------
mount -o remount,rw /
mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security
mkdir -p /dev/pts /dev/shm /mnt/out /mnt/wheels
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out /mnt/out || fail 90 "no out share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro wheels /mnt/wheels || fail 90 "no wheelhouse share"
ip link set lo up
hostname codejail-aa-vm
# sudo resolves the host name.
printf '127.0.0.1 localhost\n127.0.1.1 codejail-aa-vm\n::1 localhost\n' >/etc/hosts
# Every audit record must reach the log: no printk rate limit (there is no auditd).
sysctl -q -w kernel.printk_ratelimit=0
# shellcheck source=/dev/null
[ -f "$out/vm.env" ] && . "$out/vm.env"
: >"$out/timeline.jsonl"
: >"$out/timings.txt"
say "kernel $(uname -r); AppArmor enabled: $(cat /sys/module/apparmor/parameters/enabled)"
[ "$(cat /sys/module/apparmor/parameters/enabled)" = Y ] || fail 91 "AppArmor is not enabled in this kernel"

# --- Provision with our own script -----------------------------------------------
phase provision
mkdir -p "$repo"
tar -C /mnt/src --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude='__pycache__' -cf - . | tar -C "$repo" -xf -
# Each provisioning step stamped with the uptime, to see where emulation spends its time.
# The lean sandbox set (see sandbox-requirements.txt), as an operator's own pins file.
CODEJAIL_CONFINEMENT=off CODEJAIL_SKIP_APT=1 CODEJAIL_SANDBOX_REQUIREMENTS=tests/apparmor_vm/sandbox-requirements.txt \
    CODEJAIL_PIP_OPTIONS="--no-index --find-links /mnt/wheels --no-compile" \
    bash -x "$repo/deploy/provision.sh" 2>&1 | while IFS= read -r line; do
        echo "$(cut -d' ' -f1 /proc/uptime) $line"
    done >"$out/provision.log"
[ "${PIPESTATUS[0]}" = 0 ] || { tail -n 30 "$out/provision.log"; fail 92 "deploy/provision.sh"; }
grep -q '"mode": "off"' /etc/codejail-service/confinement.json || fail 92 "our confinement layer is not off"
phase_done ok

# Emulation runs Python several times slower than the host: give the sandbox
# more CPU seconds so `import numpy` finishes (a numpy run takes about 3 s of CPU
# here, and was once killed at exit by a CPU limit of 3 s: 4, as much as its
# wall time may take), and REALTIME 4 s instead of 3, not more: the live suite
# checks that a sleeping run is killed within 6 s (measured: REALTIME + 0.5 s).
cp /etc/codejail-service/config.yml /etc/codejail-service/apparmor-vm.yml
cat >>/etc/codejail-service/apparmor-vm.yml <<YAML
# AppArmor VM (tests/apparmor_vm/vm-init.sh): limits for emulation.
CODE_JAIL:
  python_bin: /opt/codejail-service/sandbox-venv/bin/python
  user: codejail-sandbox
  limits: {CPU: ${VM_CPU_LIMIT:-4}, REALTIME: ${VM_REALTIME_LIMIT:-4}, VMEM: 536870912, FSIZE: 1048576, NPROC: 15, PROXY: 0}
# A request for a busy worker may wait longer than 1 s: emulated runs are slow.
CODEJAIL_ADMISSION: {max_waiting: 8, deadline_seconds: 13.0, retry_after_seconds: 1}
# AppArmor alone bounds no run's total memory across its processes (ADR 8): say so.
CODEJAIL_ALLOW_UNBOUNDED_RUN_MEMORY: true
YAML

# --- Load the profiles ---------------------------------------------------------------
phase load-profiles
for profile in "$repo"/apparmor/*; do
    case "${profile##*/}" in README*|*.md|*.rst) continue ;; esac
    [ -f "$profile" ] || continue
    apparmor_parser -r "$profile" || fail 93 "apparmor_parser -r $profile"
done
grep codejail /sys/kernel/security/apparmor/profiles
phase_done ok

# --- The live suite ------------------------------------------------------------------------
# tests/live/conftest.py starts the service with deploy/serve.sh (as on a real
# host) and stops it at the end; audit_timeline.py checks it runs confined,
# leaves out deselected-in-vm.txt and expects not-covered-by-apparmor.txt to fail.
# The live suite twice: a fresh interpreter per run (CODEJAIL_WARM_SANDBOX: false), then runs
# forked by the slots' zygotes (the default; profile codejail_zygote, each run moved to
# codejail_sandbox). VM_WARM_PYTEST_ARGS selects the second pass (default: the same as the first).
live_suite() {  # warm(0|1) pytest-output-name selection...
    local warm=$1 name=$2
    shift 2
    AUDIT_TIMELINE_CHECK_LISTS=$([ -z "${VM_PYTEST_ARGS:-}" ] && echo 1) \
        AUDIT_TIMELINE=$out/timeline.jsonl CODEJAIL_SERVICE_CFG=/etc/codejail-service/apparmor-vm.yml \
        CODEJAIL_LIVE_WARM=$warm PYTHONPATH=/mnt/wheels/runner-site:$repo/tests/apparmor_vm \
        python3.11 -m pytest -p audit_timeline -p no:django -p no:cacheprovider -o addopts= \
        -W ignore::pytest.PytestConfigWarning -v -rfEX --tb=short --durations=10 \
        "$@" tests/live 2>&1 | tee "$out/$name.txt"
    return "${PIPESTATUS[0]}"
}
cd "$repo"
phase "live suite (fresh interpreters)"
# shellcheck disable=SC2086  # VM_PYTEST_ARGS is a list of arguments
live_suite 0 pytest ${VM_PYTEST_ARGS:--k "test_deny_ or test_allow_ or test_support_"}
suite_status=$?
phase_done "exit $suite_status"
cp /tmp/cjlive-service.log "$out/service.log" 2>/dev/null

phase "live suite (warm sandbox)"
# shellcheck disable=SC2086
live_suite 1 pytest-warm ${VM_WARM_PYTEST_ARGS:-${VM_PYTEST_ARGS:--k "test_deny_ or test_allow_ or test_support_"}}
warm_status=$?
phase_done "exit $warm_status"
cp /tmp/cjlive-service.log "$out/service-warm.log" 2>/dev/null
[ "$suite_status" = 0 ] && suite_status=$warm_status

# --- Audit records, by test -----------------------------------------------------------------
dmesg >"$out/dmesg.txt"
python3.11 "$repo/tests/apparmor_vm/audit_report.py" "$out/timeline.jsonl" "$out/dmesg.txt" >"$out/audit-report.txt"
report_status=$?
cp /etc/codejail-service/apparmor-vm.yml "$out/"
say "suite exit $suite_status, audit report exit $report_status"
status=$suite_status
[ "$status" = 0 ] && [ "$report_status" != 0 ] && status=96
echo "$status" >"$out/status"
power_off
