#!/bin/bash
# Build (or reuse) the wheelhouse the VM installs from: the VM has no network,
# and building or downloading under emulation would be slow. Wheels are built
# on the host with Debian's python3.11 (the VM's), cached under
# $CACHE_DIR/wheelhouse-<hash of the requirement files>/. Prints that path.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CACHE_DIR=${CACHE_DIR:-/var/cache/codejail-service/apparmor-vm}
PYTHON=/usr/bin/python3.11

reqs=(
    "$repo/requirements/base.txt"          # the app venv (deploy/provision.sh)
    "$here/sandbox-requirements.txt"       # the sandbox venv, lean
    "$here/runner-requirements.txt"        # pytest + requests for tests/live
)
# Building our project from the checkout needs its build backend.
build_reqs=("setuptools>=77" wheel)

log() { echo "[wheelhouse] $*" >&2; }

hash=$( { cat "$0" "${reqs[@]}"; printf '%s\n' "${build_reqs[@]}"; } | sha256sum | cut -c1-16)
out="$CACHE_DIR/wheelhouse-$hash"
if [[ -f "$out/complete" ]]; then
    log "cached wheelhouse: $out"
    echo "$out"
    exit 0
fi
mkdir -p "$CACHE_DIR"
work=$(mktemp -d "$CACHE_DIR/wheelhouse-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
args=()
for r in "${reqs[@]}"; do args+=(-r "$r"); done
log "building wheels for ${reqs[*]##*/}"
"$PYTHON" -m pip wheel -q --disable-pip-version-check -w "$work" "${args[@]}" "${build_reqs[@]}" \
    >"$work/pip.log" 2>&1 || { grep -v "is ignored: it is neither" "$work/pip.log" >&2; exit 1; }
# The live suite's runner, ready to use from PYTHONPATH: nothing to install in the VM.
"$PYTHON" -m pip install -q --disable-pip-version-check --no-index --find-links "$work" \
    --target "$work/runner-site" -r "$here/runner-requirements.txt" \
    >>"$work/pip.log" 2>&1 || { grep -v "is ignored: it is neither" "$work/pip.log" >&2; exit 1; }
chmod -R a+rX "$work"
echo "built $(date -u +%FT%TZ) in $(( $(date +%s) - start )) s" >"$work/complete"
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
find "$CACHE_DIR" -maxdepth 1 -name 'wheelhouse-*' ! -path "$out" -exec rm -rf {} +
log "built wheelhouse in $(( $(date +%s) - start )) s: $out"
echo "$out"
