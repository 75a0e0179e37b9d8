#!/usr/bin/env bash
# `make test-fresh-machine` (root): the README's commands on a machine nothing was installed on.
#
# A used development or CI machine keeps what earlier work installed (sudo, apparmor, venvs), so
# a target that forgets to install what it uses still passes there. This rehearsal runs the
# README's steps in a fresh Debian 12 root filesystem (mmdebstrap --variant=minbase bookworm),
# with only this host's package-index and certificate settings passed in:
#
#   phase 1, on this host's network (apt and pip reach the registries): `apt-get install make`
#     (the README's one prerequisite), `make quality`, `make test-unit`, `make docs`, and
#     `make install-host` (everything `make run` installs);
#   phase 2, in a network namespace of its own (nothing to fetch, and its egress testbed, firewall
#     table and port 8550 stay apart from this host's): `make run`, until GET /health/ answers 200
#     and a problem runs through POST /api/v0/code-exec.
#
# Each phase is a chroot in private mount and PID namespaces: its mounts and every process it
# started (gunicorn, zygotes) end with it. Not covered: the live suites, the AppArmor VM and the
# Docker targets inside the root filesystem (each installs its own tools; they run on this host).
# Environment: REHEARSAL_REV [the work tree's tracked files] a commit to rehearse instead;
# CACHE_DIR [/var/cache/codejail-service/fresh-machine] where the minbase tarball is kept;
# DEBIAN_MIRROR [this host's].
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/host-tools.sh
. "$here/../host-tools.sh"
log() { echo "[fresh-machine] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root (mmdebstrap, chroot, namespaces)"; exit 2; }
ensure_tools fresh-machine mmdebstrap:mmdebstrap unshare:util-linux git:git
t_start=$(date +%s)
cache=${CACHE_DIR:-/var/cache/codejail-service/fresh-machine}
base="$cache/bookworm-minbase.tar"
mkdir -p "$cache"
if [ ! -f "$base" ]; then
    log "making a minbase bookworm root filesystem with mmdebstrap ($(debian_mirror))"
    mmdebstrap --quiet --variant=minbase bookworm "$cache/partial.tar" "$(debian_mirror)"
    mv "$cache/partial.tar" "$base"
fi

work=$(mktemp -d /var/tmp/codejail-fresh-machine.XXXXXX)
root="$work/root"
finish() {
    local status=$?
    # Every mount was in the phases' private namespaces, gone with them; refuse to delete through one.
    if findmnt -rn -o TARGET | grep -q "^$work"; then
        log "mounts left under $work: not removing it"
    else
        rm -rf "$work"
    fi
    if [ "$status" = 0 ]; then log "passed in $(( $(date +%s) - t_start )) s"; else log "FAILED (status $status)"; fi
}
trap finish EXIT
mkdir "$root"
tar -C "$root" -xf "$base"

# The checkout as a clean clone has it: the tracked files (of REHEARSAL_REV, if given).
src=/root/codejail-service
mkdir -p "$root$src"
if [ -n "${REHEARSAL_REV:-}" ]; then
    git -C "$repo" archive "$REHEARSAL_REV" | tar -x -C "$root$src"
else
    (cd "$repo" && git ls-files -z --cached | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) \
        | tar -x -C "$root$src"
fi
log "rehearsing ${REHEARSAL_REV:-the work tree} of $repo in $root"

# This host's package sources and settings (apt, pip), and its certificate bundle, kept apart from
# the root filesystem's own bundle (which the ca-certificates package the service installs
# rewrites): the registries' TLS may be verified here against an authority only this host trusts.
rm -f "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*
cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/" 2>/dev/null || true
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/sources.list"
cp -a /etc/apt/apt.conf.d/. "$root/etc/apt/apt.conf.d/"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$root/etc/xdg" && cp -a /etc/xdg/pip "$root/etc/xdg/"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/fresh-machine/host-ca.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '127.0.0.1 localhost %s\n::1 localhost\n' "$(hostname)" > "$root/etc/hosts"
# Local package directories that the host's pip settings name, read-only, at the same paths.
mapfile -t pip_dirs < <(cat /etc/pip.conf /etc/xdg/pip/pip.conf ~/.config/pip/pip.conf 2>/dev/null \
    | grep -oE '(file://)?/[^ ]+' | sed 's|^file://||; s|/simple$||' | sort -u)
[ -n "${PIP_FIND_LINKS:-}" ] && pip_dirs+=("$PIP_FIND_LINKS")
[ -f ~/.config/pip/pip.conf ] && install -D -m 0644 ~/.config/pip/pip.conf "$root/root/.config/pip/pip.conf"

# The environment of a root login on that machine, plus the host's pip settings and certificates.
chroot_env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
            TERM=dumb DEBIAN_FRONTEND=noninteractive)
while IFS= read -r -d '' var; do
    case "$var" in PIP_CERT=*) ;; PIP_*=*) chroot_env+=("$var") ;; esac
done < <(env -0)
for var in SSL_CERT_FILE REQUESTS_CA_BUNDLE PIP_CERT CURL_CA_BUNDLE; do
    chroot_env+=("$var=/etc/fresh-machine/host-ca.crt")
done

# in_root [--net] SCRIPT: run SCRIPT as root in the root filesystem, in namespaces of its own.
in_root() {
    local net=()
    [ "$1" = --net ] && { net=(--net); shift; }
    local binds="" dir
    for dir in "${pip_dirs[@]}"; do
        [ -d "$dir" ] || continue
        binds+="mkdir -p '$root$dir' && mount --bind '$dir' '$root$dir' && mount -o remount,bind,ro '$root$dir'; "
    done
    unshare --mount --pid --fork --propagation private "${net[@]}" bash -euc "
        mount --bind '$root' '$root'  # / a mount point, as on a real machine (ip netns remounts it)
        mount --rbind /dev '$root/dev'
        mount -t tmpfs -o mode=1777,nosuid,nodev shm '$root/dev/shm'
        mount -t proc proc '$root/proc'
        mount --rbind /sys '$root/sys'
        mount -t tmpfs -o mode=0755 run '$root/run'
        $binds
        exec chroot '$root' env -i ${chroot_env[*]@Q} bash -euxc \"\$1\"" in_root "$1"
}

log "phase 1: make quality, make test-unit, make docs, make install-host (this host's network)"
in_root "
    cd $src
    command -v make >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends make >/dev/null; }
    make quality
    make test-unit
    make docs
    make install-host
"

log "phase 2: make run in a network namespace of its own, until /health/ answers 200 and a run answers"
in_root --net "
    ip link set lo up
    cd $src
    make run > /var/log/make-run.log 2>&1 &
    MAKE_RUN_PID=\$! python3.11 - <<'PY' || { tail -60 /var/log/make-run.log >&2; exit 1; }
import json, os, time, urllib.error, urllib.parse, urllib.request
base = 'http://127.0.0.1:8550'
deadline = time.monotonic() + 300
while True:
    try:
        with urllib.request.urlopen(base + '/health/', timeout=5) as answer:
            print('health:', answer.status, answer.read().decode()[:400])
            break
    except urllib.error.HTTPError as error:
        body = error.read().decode()[:400]
    except OSError as error:
        body = str(error)
    try:  # make run still running (not a zombie its shell has yet to reap)?
        with open('/proc/' + os.environ['MAKE_RUN_PID'] + '/stat') as stat:
            running = stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        running = False
    if not running:
        raise SystemExit('make run ended before /health/ answered 200')
    if time.monotonic() > deadline:
        raise SystemExit('no 200 from /health/ in 300 s; last: ' + body)
    time.sleep(2)
payload = json.dumps({'code': 'import numpy\nx = int(numpy.int64(x) + 1)', 'globals_dict': {'x': 16}})
data = urllib.parse.urlencode({'payload': payload}).encode()
with urllib.request.urlopen(base + '/api/v0/code-exec', data=data, timeout=30) as answer:
    result = json.load(answer)
print('code-exec:', result)
assert result == {'globals_dict': {'x': 17}}, result
PY
"
