#!/bin/bash
# `make apparmor-compile`: compile every profile in apparmor/ without loading it
# (no AppArmor kernel needed), so a syntax or policy error fails CI.
set -euo pipefail
profiles=$(cd "$(dirname "$0")/../../apparmor" && pwd)
. "$(dirname "$0")/../host-tools.sh"
ensure_tools apparmor-compile apparmor_parser:apparmor
count=0
for profile in "$profiles"/*; do
    case "${profile##*/}" in README*|*.md|*.rst) continue ;; esac
    [ -f "$profile" ] || continue
    # -Q: compile only, -K: no cache, -T: do not read the cache. The parser's
    # note that this kernel has no AppArmor is noise here.
    apparmor_parser -Q -K -T "$profile" 2> >(grep -v 'Cache read/write disabled' >&2)
    echo "compiled: apparmor/${profile##*/}"
    count=$((count + 1))
done
[ "$count" -gt 0 ] || { echo "no profile in apparmor/" >&2; exit 1; }
