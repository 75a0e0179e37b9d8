# Install the Debian packages a target uses, where missing, before its first use: CI may run on
# a machine as the image delivers it (no sudo, apparmor, docker.io, mmdebstrap, qemu), and nothing
# installed by hand on a used machine may be relied on.
#   sourced:  ensure_tools TAG SPEC...      run:  bash tests/host-tools.sh TAG SPEC...
# SPEC is program:package (the package is installed when the program is not on PATH; a program
# may be an absolute path), or -:package (when dpkg does not list the package as installed).
ensure_tools() {
    local tag=$1 spec program package need=()
    shift
    for spec in "$@"; do
        program=${spec%%:*} package=${spec##*:}
        if [ "$program" = - ]; then
            dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' && continue
        else
            command -v "$program" >/dev/null && continue
        fi
        need+=("$package")
    done
    [ ${#need[@]} -gt 0 ] || return 0
    [ "$(id -u)" = 0 ] || { echo "[$tag] missing ${need[*]}: install them (apt-get install), or run as root" >&2; return 2; }
    echo "[$tag] installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The Debian mirror this host's apt uses (DEBIAN_MIRROR overrides), for mmdebstrap.
debian_mirror() {
    [ -n "${DEBIAN_MIRROR:-}" ] && { echo "$DEBIAN_MIRROR"; return; }
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    ensure_tools "$@"
fi
