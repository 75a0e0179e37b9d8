#!/bin/bash
# `make test-tutor` (root): the Tutor plugin (deploy/tutor-contrib-codejail-service) with the real
# Tutor (its own pinned venv, .cache/venv-tutor), on Debian's Docker engine.
#
#  1. pip install the plugin, `tutor plugins enable codejail-service`, `tutor config save` into a
#     temporary TUTOR_ROOT with this test's settings (UIDs of its own, the egress testbed as the
#     webapp_egress target, an extra sandbox package).
#  2. The rendered environment (tests/deploy/test_tutor.py): the compose files validated by
#     Debian's docker-compose (`config`), the Kubernetes ones rendered by kustomize and validated
#     against the 1.30 and newest schemas, and what each must hold (capabilities, read-only root,
#     a capped tmpfs per slot, the internal network, the LMS/CMS settings, the image definition).
#  3. `tutor images build codejail-service`: the plugin's image definition, built from a source
#     archive of this checkout and a wheelhouse, both served on loopback to the build.
#  4. Our service alone, started from the rendered compose files with that image on the engine,
#     on the rendered internal network (and no forwarding at all: docker-lib.sh); then a problem
#     run through it as the LMS sends one (POST /api/v0/code-exec), and /health/ read.
# Everything it starts is stopped on exit, even on failure. Environment: CACHE_DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
LOG_TAG=test-tutor
DOCKER_EXTRA_TOOLS=(docker-compose:docker-compose)
# shellcheck source=tests/deploy/docker-lib.sh
. "$here/docker-lib.sh"
tutor_venv="$repo/.cache/venv-tutor"
deploy_venv="$repo/.cache/venv-deploy"
image=codejail-service:tutor-ci
project=codejail-tutor-test
t_start=$(date +%s)
work=""
server_pid=""
export TUTOR_ROOT="" TUTOR_PLUGINS_ROOT=""

compose() {
    (cd "$TUTOR_ROOT/env/local" && docker-compose -p "$project" -f docker-compose.yml -f docker-compose.prod.yml "$@")
}
cleanup() {
    local status=$?
    if [ -n "$TUTOR_ROOT" ] && [ -f "$TUTOR_ROOT/env/local/docker-compose.yml" ]; then
        compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    fi
    [ -n "$server_pid" ] && { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
    docker_finish "$status"
}
trap cleanup EXIT

docker_setup
work=$(mktemp -d "$CACHE_DIR/tutor-test.XXXXXX")
export TUTOR_ROOT="$work/tutor" TUTOR_PLUGINS_ROOT="$work/tutor-plugins"
mkdir -p "$TUTOR_PLUGINS_ROOT"

# --- 1. Tutor, the plugin, the rendered environment --------------------------------------------
if [ ! -f "$tutor_venv/.installed" ] || [ "$repo/requirements/tutor.txt" -nt "$tutor_venv/.installed" ]; then
    log "installing Tutor (requirements/tutor.txt) into $tutor_venv"
    rm -rf "$tutor_venv"
    /usr/bin/python3.11 -m venv "$tutor_venv"
    "$tutor_venv/bin/pip" install -q --disable-pip-version-check -r "$repo/requirements/tutor.txt" \
        2> >(grep -v "^WARNING: Location" >&2)
    touch "$tutor_venv/.installed"
fi
"$tutor_venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall \
    "$repo/deploy/tutor-contrib-codejail-service" 2> >(grep -v "^WARNING: Location" >&2)
# Docker 20.10 (Debian's) has no buildx, which `tutor images build` calls: a test-only plugin
# drops that word from the build command (BuildKit is on through DOCKER_BUILDKIT), and buildx's
# --output=type=docker (the engine's own BuildKit loads the image into the engine anyway).
cat >"$TUTOR_PLUGINS_ROOT/codejail_test_no_buildx.py" <<'PY'
from tutor import hooks


@hooks.Filters.DOCKER_BUILD_COMMAND.add()
def _no_buildx(command):
    return [word for word in command if word not in ("buildx", "--output=type=docker")]
PY
tutor() { PATH="/usr/bin:$PATH" DOCKER_BUILDKIT=1 "$tutor_venv/bin/tutor" "$@"; }
log "$(tutor --version)"
tutor plugins enable codejail-service codejail_test_no_buildx >/dev/null

# The source archive and the wheelhouse for the build, served on loopback (the build's network is
# the host's): what an operator's CODEJAIL_SERVICE_SOURCE_URL and pip mirror would be.
serve="$work/serve"
mkdir -p "$serve/src/codejail-service"
(cd "$repo" && git ls-files -z --cached | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) \
    | tar -xf - -C "$serve/src/codejail-service"
tar -czf "$serve/codejail-service.tar.gz" -C "$serve/src" codejail-service
rm -rf "$serve/src"
docker_wheelhouse "$repo"
cp -al "$wheelhouse" "$serve/wheelhouse"
port=$(/usr/bin/python3.11 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/bin/python3.11 -m http.server --bind 127.0.0.1 --directory "$serve" "$port" >"$work/http.log" 2>&1 &
server_pid=$!
docker_base_image

egress=$(bash "$repo/deploy/egress-testbed.sh" up)
tutor config save \
    --set CODEJAIL_SERVICE_DOCKER_IMAGE="$image" \
    --set CODEJAIL_SERVICE_BASE_IMAGE="$BASE_IMAGE" \
    --set CODEJAIL_SERVICE_SOURCE_URL="http://127.0.0.1:$port/codejail-service.tar.gz" \
    --set CODEJAIL_SERVICE_BUILD_PIP_OPTIONS="--no-index --trusted-host 127.0.0.1 --find-links http://127.0.0.1:$port/wheelhouse/" \
    --set CODEJAIL_SERVICE_APP_UID="$TEST_APP_UID" --set CODEJAIL_SERVICE_SANDBOX_UID="$TEST_SANDBOX_UID" \
    --set CODEJAIL_SERVICE_EGRESS_CHECK_TARGET="$egress" \
    --set "CODEJAIL_SERVICE_EXTRA_PIP_REQUIREMENTS=[\"$EXTRA_SANDBOX_PACKAGE\"]" >/dev/null

# --- 2. The rendered environment --------------------------------------------------------------
"$deploy_venv/bin/pytest" -q -m tutor "$repo/tests/deploy/test_tutor.py"

# --- 3. tutor images build ------------------------------------------------------------------------
log "tutor images build codejail-service (log: $work/tutor-build.log)"
started=$(date +%s)
if ! tutor images build codejail-service --no-registry-cache --docker-arg=--network=host --docker-arg=--progress=plain \
        >"$work/tutor-build.log" 2>&1; then
    grep -v "WARNING: Location" "$work/tutor-build.log" | tail -40 >&2
    log "FAILED: tutor images build"
    exit 1
fi
log "built $image with tutor images build in $(( $(date +%s) - started )) s"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""

# --- 4. Our service from the rendered compose files, and a problem through it -----------------------
compose up -d --no-deps codejail-service 2>&1 | grep -v "IPv4 forwarding" >&2
container=$(compose ps -q codejail-service)
url="http://$(container_ip "$container"):8550"
code=$(wait_health "$url" "$work/health.json")
log "/health/ answered $code: $(cat "$work/health.json")"
[ "$code" = 200 ] || { compose logs --tail 40 codejail-service >&2; exit 1; }
"$repo/.venv/bin/python" - "$url" "$EXTRA_SANDBOX_PACKAGE" <<'PY'
import json, sys
import requests

url, extra = sys.argv[1], sys.argv[2].split("==")[0]
health = requests.get(url + "/health/", timeout=10).json()["checks"]
assert health["run_dir_cap"]["capped"] is True, health["run_dir_cap"]
assert health["webapp_egress"]["passed"] is True, health["webapp_egress"]
# A "custom Python-evaluated input" check, as the LMS's remote_exec sends it.
code = (
    "import %s\n"
    "def check(expect, ans):\n"
    "    return abs(float(ans) - expect) < 1e-6\n"
    "correct = ['correct' if check(expect, submission[0]) else 'incorrect']\n"
    "table_rows = len(%s.tabulate([[1, 2]]).splitlines())\n" % (extra, extra))
payload = {"code": code, "globals_dict": {"expect": 1.5, "submission": ["1.5"]}, "python_path": [],
           "limit_overrides_context": None, "slug": "tutor-test", "unsafely": False}
response = requests.post(url + "/api/v0/code-exec", data={"payload": json.dumps(payload)}, timeout=(0.5, 10))
answer = response.json()
assert response.status_code == 200 and "emsg" not in answer, answer
assert answer["globals_dict"]["correct"] == ["correct"] and answer["globals_dict"]["table_rows"] == 3, answer
print(f"[test-tutor] a problem ran through the plugin's service: {answer['globals_dict']}", file=sys.stderr)
PY
