# Sourced by tests/deploy/image-test.sh (`make test-image`) and tests/deploy/tutor-test.sh
# (`make test-tutor`), as root: Debian's Docker engine, a base image made here, our image.
#
# - Debian's docker.io (Docker 20.10) and its dockerd, started here if none runs (and then
#   stopped again by docker_teardown). Started without touching the host's firewall or
#   forwarding (--iptables=false --ip-forward=false, no default bridge): this host is shared.
#   Docker 20.10 gives even an --internal network a default route through the host, and
#   enforces "internal" with iptables rules; here our own nftables table does it instead:
#   nothing a container sends is forwarded anywhere, and the host answers a container only
#   on connections the host opened (the tests' HTTP requests). Deleted at the end.
# - No registry: the base image is a minbase Debian bookworm made by mmdebstrap from this
#   host's Debian mirror, `docker import`ed; the Dockerfile's BASE_IMAGE build arg takes it.
# - pip inside a build cannot verify TLS to the package index here, so the build installs
#   from a wheelhouse made on this host (CODEJAIL_PIP_OPTIONS), cached by requirements hash.
# Environment: CACHE_DIR [/var/cache/codejail-service/docker], DEBIAN_MIRROR [this host's].
DOCKER=/usr/bin/docker   # Debian's client: BuildKit built in (the one in /usr/local/bin wants buildx)
CACHE_DIR=${CACHE_DIR:-/var/cache/codejail-service/docker}
BASE_IMAGE=codejail-test-base:bookworm
# UIDs other than the defaults: RLIMIT_NPROC is per UID host-wide, and a service provisioned
# on this host (make test-live) uses the default ones.
TEST_APP_UID=181001
TEST_SANDBOX_UID=181100
TEST_POOL_SIZE=4
# The operator's extra sandbox package (see the Makefile's EXTRA_SANDBOX_PACKAGE).
EXTRA_SANDBOX_PACKAGE=${EXTRA_SANDBOX_PACKAGE:-tabulate==0.9.0}
NFT_TABLE=codejail_docker_test
dockerd_pid=""

# shellcheck source=tests/host-tools.sh
. "$(dirname "${BASH_SOURCE[0]}")/../host-tools.sh"

log() { echo "[${LOG_TAG:-docker}] $*" >&2; }

docker_setup() {
    [ "$(id -u)" = 0 ] || { log "run as root (dockerd, nftables)"; exit 2; }
    ensure_tools "${LOG_TAG:-docker}" "$DOCKER:docker.io" mmdebstrap:mmdebstrap nft:nftables \
        curl:curl ip:iproute2 "${DOCKER_EXTRA_TOOLS[@]}"
    mkdir -p "$CACHE_DIR"
    # Our firewall first: no container may reach anything but the host's own connections to it.
    nft -f - <<NFT
table inet $NFT_TABLE
delete table inet $NFT_TABLE
table inet $NFT_TABLE {
    chain forward {
        type filter hook forward priority -10; policy accept;
        iifname "br-*" counter drop
        oifname "br-*" counter drop
    }
    chain input {
        type filter hook input priority -10; policy accept;
        iifname "br-*" ct state established,related accept
        iifname "br-*" counter drop
    }
}
NFT
    if ! "$DOCKER" info >/dev/null 2>&1; then
        log "starting dockerd (log: $CACHE_DIR/dockerd.log)"
        dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
            >"$CACHE_DIR/dockerd.log" 2>&1 &
        dockerd_pid=$!
        local _
        for _ in $(seq 1 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.5; done
        "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$CACHE_DIR/dockerd.log" >&2; log "dockerd did not start"; exit 1; }
    fi
    log "$("$DOCKER" version --format 'Docker {{.Server.Version}}'), $("$DOCKER" info --format \
        '{{.Driver}}, cgroup v{{.CgroupVersion}}, security: {{join .SecurityOptions " "}}')"
}

docker_teardown() {
    if [ -n "$dockerd_pid" ]; then
        log "stopping the dockerd this test started"
        kill -TERM "$dockerd_pid" 2>/dev/null || true
        local _
        for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
        dockerd_pid=""
    fi
    nft delete table inet "$NFT_TABLE" 2>/dev/null || true
}

# The end of a test script's EXIT trap, after what it started itself is gone: the untagged
# leftovers of rebuilds pruned, the engine stopped (docker_teardown), the script's $work
# directory removed, and the outcome logged, timed from its $t_start.
docker_finish() {
    local status=$1
    "$DOCKER" image prune -f >/dev/null 2>&1 || true
    docker_teardown
    if [ -n "${work:-}" ]; then rm -rf "$work"; fi
    if [ "$status" = 0 ]; then log "passed in $(( $(date +%s) - t_start )) s"; else log "FAILED (status $status)"; fi
}

docker_base_image() {
    "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return
    local mirror tar
    mirror=$(debian_mirror)
    log "making the bookworm base image with mmdebstrap (minbase, $mirror)"
    tar="$CACHE_DIR/base.$$.tar"
    mmdebstrap --quiet --variant=minbase bookworm "$tar" "$mirror"
    "$DOCKER" import "$tar" "$BASE_IMAGE" >/dev/null
    rm -f "$tar"
}

# docker_wheelhouse REPO: sets $wheelhouse, the wheels of both venvs' pins and the extra package.
docker_wheelhouse() {
    local repo=$1 reqs_hash
    reqs_hash=$(cat "$repo/requirements/base.txt" "$repo/requirements/sandbox/current-py311.txt" \
        <(echo "$EXTRA_SANDBOX_PACKAGE") | sha256sum | cut -c1-16)
    wheelhouse="$CACHE_DIR/wheelhouse-$reqs_hash"
    if [ ! -d "$wheelhouse" ]; then
        log "building the wheelhouse"
        rm -rf "$CACHE_DIR"/wheelhouse-*
        # One resolution per venv: the app's pins and the sandbox's may differ (cffi, for one).
        /usr/bin/python3.11 -m pip wheel -q --disable-pip-version-check -w "$wheelhouse.tmp" \
            -r "$repo/requirements/base.txt" "setuptools>=77" wheel pip 2> >(grep -v "^WARNING: Location" >&2)
        /usr/bin/python3.11 -m pip wheel -q --disable-pip-version-check -w "$wheelhouse.tmp" \
            -r "$repo/requirements/sandbox/current-py311.txt" "$EXTRA_SANDBOX_PACKAGE" \
            2> >(grep -v "^WARNING: Location" >&2)
        mv "$wheelhouse.tmp" "$wheelhouse"
    fi
}

# docker_build_service REPO TAG [docker build args]: build the Dockerfile of the checkout at REPO
# (its tracked files as they are in the work tree, as `docker build .` from a clean clone sees them).
docker_build_service() {
    local repo=$1 tag=$2 context started
    started=$(date +%s)
    docker_base_image
    docker_wheelhouse "$repo"
    context=$(mktemp -d "$CACHE_DIR/context.XXXXXX")
    (cd "$repo" && git ls-files -z --cached | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) \
        | tar -xf - -C "$context"
    cp -al "$wheelhouse" "$context/wheelhouse"
    log "docker build $tag (log: $CACHE_DIR/build.log)"
    # --network host: apt in the build reaches the Debian mirror (this dockerd has no bridge).
    # Built by BuildKit, whose cache keys RUN --mount=type=bind on the content: an unchanged
    # checkout rebuilds in seconds.
    if ! (cd "$context" && DOCKER_BUILDKIT=1 "$DOCKER" build --progress plain --network host \
            --build-arg BASE_IMAGE="$BASE_IMAGE" \
            --build-arg APP_UID="$TEST_APP_UID" --build-arg SANDBOX_UID="$TEST_SANDBOX_UID" \
            --build-arg SANDBOX_POOL_SIZE="$TEST_POOL_SIZE" \
            --build-arg CODEJAIL_EXTRA_PIP_REQUIREMENTS="$EXTRA_SANDBOX_PACKAGE" \
            --build-arg CODEJAIL_PIP_OPTIONS="--no-index --find-links /src/wheelhouse" \
            -t "$tag" "${@:3}" .) >"$CACHE_DIR/build.log" 2>&1; then
        grep -v "WARNING: Location" "$CACHE_DIR/build.log" | tail -40 >&2
        rm -rf "$context"
        log "FAILED: the image did not build"
        return 1
    fi
    rm -rf "$context"
    log "built $tag in $(( $(date +%s) - started )) s"
}

# The slots' tmpfs, as the Deployment's emptyDirs and Tutor's compose file give them.
slot_tmpfs_args() {
    local i
    for ((i = 0; i < TEST_POOL_SIZE; i++)); do
        printf '%s\n' --tmpfs \
            "/var/lib/codejail-service/runs/$i:size=64m,nr_inodes=16384,uid=$TEST_APP_UID,gid=$TEST_APP_UID,mode=0755,noexec,nosuid,nodev"
    done
}

container_ip() { "$DOCKER" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }

# wait_health URL FILE: the status /health/ settles on (200 or 503), its body in FILE.
wait_health() {
    local code="" _
    for _ in $(seq 1 120); do
        code=$(curl -s -o "$2" -w '%{http_code}' "$1/health/" || true)
        case "$code" in 200|503) break ;; esac
        sleep 1
    done
    echo "${code:-none}"
}
