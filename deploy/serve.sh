#!/usr/bin/env bash
# Serve codejail-service with gunicorn as the app user, from the provisioned app venv.
# Used by `make run` and the live test suite; the Docker image runs the same command
# as its CMD. Environment: CODEJAIL_SERVICE_BIND [127.0.0.1:8550], CODEJAIL_SERVICE_CFG
# [/etc/codejail-service/config.yml], and those of codejail_service/gunicorn_config.py.
set -euo pipefail
prefix="${CODEJAIL_PREFIX:-/opt/codejail-service}"
app_user="${CODEJAIL_APP_USER:-codejail-app}"
export CODEJAIL_SERVICE_CFG="${CODEJAIL_SERVICE_CFG:-/etc/codejail-service/config.yml}"
export DJANGO_SETTINGS_MODULE=codejail_service.settings.production
# glibc gives each thread that allocates an arena of its own (up to 8 per core): gthread's
# threads each reading a run's output (up to 1 MiB) left workers ~5-10 MiB larger per 1,000
# requests in the soak; with two arenas, 0-3 MiB (tests/robustness/test_soak.py, 2,000 runs).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
cd /  # nothing of the checkout on the app's path
command=("$prefix/venv/bin/gunicorn" -c python:codejail_service.gunicorn_config codejail_service.wsgi "$@")
if [ "$(id -u)" = 0 ]; then
    # Never as root: drop to the app user, keeping only the variables the service reads.
    keep=()
    while IFS= read -r -d '' var; do
        case "$var" in CODEJAIL_*=*|DJANGO_SETTINGS_MODULE=*) keep+=("$var") ;; esac
    done < <(env -0)
    exec setpriv --reuid="$app_user" --regid="$app_user" --init-groups \
        env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=/nonexistent MALLOC_ARENA_MAX="$MALLOC_ARENA_MAX" \
        "${keep[@]}" "${command[@]}"
fi
exec "${command[@]}"
