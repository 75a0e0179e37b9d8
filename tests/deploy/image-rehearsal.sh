#!/bin/bash
# `make test-image` (root): build the Dockerfile for real and run the image the way the
# Kubernetes Deployment does, without a Docker engine.
#
#  1. A Debian bookworm base (mmdebstrap minbase from Debian's mirror), imported into
#     buildah as localhost/codejail-rehearsal-base; the build uses it in place of the
#     pinned debian:bookworm-...-slim, which cannot be pulled here.
#  2. `buildah bud` of the Dockerfile (Dockerfile syntax, RUN --mount included), with a
#     wheelhouse built on this host (CODEJAIL_PIP_OPTIONS, the Dockerfile's build arg), and
#     UIDs other than the defaults: RLIMIT_NPROC is per UID host-wide, and a service
#     provisioned on this host (make test-live) uses the default ones.
#  3. The image's CMD, USER and ENV, read from the built image, run in a private network
#     namespace (loopback only: the webapp_egress check sees an unreachable network and
#     no packet leaves the machine) with the capability bounding set of
#     deploy/kubernetes/deployment.yaml, and the image's HEALTHCHECK command run inside it.
#  4. The live API suite (tests/live) against it over HTTP, as against any deployment.
#  Also: the apparmor-loader target builds, and its apparmor_parser compiles the profile.
#
# Not covered (no container runtime here): the runtime's seccomp profile, AppArmor, PID
# and mount namespaces of a real container. Environment: CACHE_DIR, KEEP_IMAGE=1,
# IMAGE_PYTEST_ARGS (what to run of the live suite; default: confinement and support tests).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CACHE_DIR=${CACHE_DIR:-/var/cache/codejail-service/image-rehearsal}
image=localhost/codejail-service:rehearsal
base=localhost/codejail-rehearsal-base:bookworm

log() { echo "[test-image] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root (buildah, chroot, network namespaces)"; exit 2; }
t_start=$(date +%s)

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v unshare >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p "$CACHE_DIR"

# --- 1. Base image ---------------------------------------------------------------------
if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    log "building the bookworm base with mmdebstrap"
    mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$CACHE_DIR/base.tar" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$CACHE_DIR/base.tar" / >/dev/null
    buildah commit --quiet "$ctr" "$base" >/dev/null
    buildah rm "$ctr" >/dev/null
    rm -f "$CACHE_DIR/base.tar"
fi

# --- 2. Build --------------------------------------------------------------------------
work=$(mktemp -d "$CACHE_DIR/run.XXXXXX")
ctr=""
cleanup() {
    if [ -n "$ctr" ]; then buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; fi
    [ -n "${KEEP_IMAGE:-}" ] || buildah rmi "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
context="$work/context"
mkdir -p "$context"
# The tracked files of the checkout, as they are in the work tree: what a
# `docker build .` from a clean clone would send.
(cd "$repo" && git ls-files -z --cached \
    | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$context"
log "building the wheelhouse"
/usr/bin/python3.11 -m pip wheel -q --disable-pip-version-check -w "$context/wheelhouse" \
    -r "$repo/requirements/base.txt" -r "$repo/requirements/sandbox/base.txt" "setuptools>=77" wheel pip \
    2> >(grep -v "^WARNING: Location" >&2)
log "buildah bud (log: $work/build.log)"
# --no-cache: buildah does not key cached layers on bind-mounted content (BuildKit does).
if ! (cd "$context" && buildah bud --quiet --no-cache --format docker --isolation chroot --network host \
        --build-arg BASE_IMAGE="$base" \
        --build-arg APP_UID=181001 --build-arg SANDBOX_UID=181100 \
        --build-arg CODEJAIL_PIP_OPTIONS="--no-index --find-links /src/wheelhouse" \
        -t "$image" .) >"$work/build.log" 2>&1; then
    tail -40 "$work/build.log" >&2
    log "FAILED: the image did not build"
    exit 1
fi

# The AppArmor loader (deploy/kubernetes/apparmor-loader.yaml): builds, and its parser compiles
# the profile it carries (this kernel has no AppArmor to load it into).
loader=localhost/codejail-service-apparmor-loader:rehearsal
if ! (cd "$context" && buildah bud --quiet --no-cache --format docker --isolation chroot --network host \
        --build-arg BASE_IMAGE="$base" --target apparmor-loader -t "$loader" .) >"$work/loader-build.log" 2>&1; then
    tail -20 "$work/loader-build.log" >&2
    log "FAILED: the apparmor-loader image did not build"
    exit 1
fi
lctr=$(buildah from "$loader")
if ! buildah run --isolation chroot "$lctr" -- apparmor_parser -Q -K -T \
        /etc/codejail-service/apparmor/openedx_codejail_service >"$work/loader-run.log" 2>&1; then
    cat "$work/loader-run.log" >&2
    buildah rm "$lctr" >/dev/null
    log "FAILED: the apparmor-loader image cannot compile the profile"
    exit 1
fi
buildah rm "$lctr" >/dev/null
[ -n "${KEEP_IMAGE:-}" ] || buildah rmi "$loader" >/dev/null 2>&1 || true
log "apparmor-loader image: built, and its apparmor_parser compiles the profile"

# --- 3. Run it as the Deployment does --------------------------------------------------
config() {
    buildah inspect --type image "$image" | /usr/bin/python3.11 -c \
        "import json, sys; c = json.load(sys.stdin)['Docker']['config']; $1"
}
user=$(config "print(c['User'])")
config "print(*c['Env'], sep=chr(10))" >"$work/env"
config "print(*c['Cmd'], sep=chr(10))" >"$work/cmd"
config "h = c['Healthcheck']['Test']; assert h[0] == 'CMD'; print(*h[1:], sep=chr(10))" >"$work/healthcheck"
caps=$(/usr/bin/python3.11 - "$repo/deploy/kubernetes/deployment.yaml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
print(",".join("+" + c.lower() for c in re.search(r'add: \[(.*?)\]', text).group(1).replace('"', "").split(", ")))
PY
)
log "image user $user, capability bounding set -all,$caps"
ctr=$(buildah from "$image")
mnt=$(buildah mount "$ctr")
export mnt user caps work repo
export suite_dir="$context"
# The confinement and grader-support tests: what differs between an image and a host. The
# hostile-code and robustness suites test the service's code, the same in both (make test-live).
export IMAGE_PYTEST_ARGS=${IMAGE_PYTEST_ARGS:-tests/live/test_confinement.py tests/live/test_support.py}

unshare --mount --net --propagation private bash -euo pipefail <<'NS'
ip link set lo up
mount -t proc proc "$mnt/proc"
mount --rbind /dev "$mnt/dev"
mount --rbind /sys "$mnt/sys"
# Docker and the kubelet write the container's /etc/hosts with its hostname (sudo resolves it).
printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$(hostname)" >"$work/hosts"
mount --bind "$work/hosts" "$mnt/etc/hosts"
mapfile -t env <"$work/env"
mapfile -t cmd <"$work/cmd"
mapfile -t healthcheck <"$work/healthcheck"
as_container() {
    chroot "$mnt" /usr/bin/setpriv --reuid="${user%:*}" --regid="${user#*:}" --clear-groups \
        --bounding-set="-all,$caps" --inh-caps=-all /usr/bin/env -i "${env[@]}" "$@"
}
# A process group of its own (job control): the TERM below must reach gunicorn itself, not
# only the subshell that runs chroot (which left the service running, re-parented to init).
set -m
as_container "${cmd[@]}" >"$work/service.log" 2>&1 &
set +m
server=$!
status=1
for _ in $(seq 1 120); do
    code=$(curl -s -o "$work/health.json" -w '%{http_code}' http://127.0.0.1:8550/health/ || true)
    [ "$code" = 200 ] && { status=0; break; }
    [ "$code" = 503 ] && break
    sleep 1
done
echo "[test-image] /health/ answered ${code:-nothing}: $(cat "$work/health.json" 2>/dev/null)" >&2
if [ "$status" = 0 ]; then
    if as_container "${healthcheck[@]}"; then
        echo "[test-image] the image's HEALTHCHECK reports healthy" >&2
    else
        echo "[test-image] FAILED: the image's HEALTHCHECK reports unhealthy" >&2; status=1
    fi
fi
if [ "$status" = 0 ]; then
    # shellcheck disable=SC2086 # IMAGE_PYTEST_ARGS is a list of words
    (cd "$suite_dir" && CODEJAIL_LIVE_URL=http://127.0.0.1:8550 "$repo/.venv/bin/pytest" \
        -p no:cacheprovider -o addopts="" -q -rs $IMAGE_PYTEST_ARGS) || status=1
fi
[ "$status" = 0 ] || tail -30 "$work/service.log" >&2
kill -TERM -- "-$server" 2>/dev/null || true
for _ in $(seq 1 40); do
    kill -0 -- "-$server" 2>/dev/null || break
    sleep 0.5
done
kill -KILL -- "-$server" 2>/dev/null || true
wait "$server" || true
exit "$status"
NS
log "passed in $(( $(date +%s) - t_start )) s"
