#!/usr/bin/env bash
# Provision a host (or a Docker image) for codejail-service. Run as root; idempotent.
#
# The one place where the sandbox is set up: `make run`, `.ci/run`, the Dockerfile
# and the AppArmor VM test all call this script. It installs the system packages,
# creates the app and sandbox users, builds the sandbox venv (with our confinement
# layer) and the app venv, and writes the sudoers file and the config. It starts
# nothing. Settings (environment variables, defaults in brackets; each is a row of the
# configuration table, codejail_service/configuration.py, which a test checks this against):
#   CODEJAIL_PREFIX          [/opt/codejail-service]  venvs live here
#   CODEJAIL_APP_USER/UID    [codejail-app/180001]    runs gunicorn
#   CODEJAIL_SANDBOX_USER/UID [codejail-sandbox/180100] runs submitted code (without a pool)
#   CODEJAIL_SANDBOX_POOL_SIZE [4]      sandbox users <USER>-0 .. -<N-1> (UIDs UID+1 ..), one
#                                       per run at once, whichever worker serves it; 0: no pool
#   CODEJAIL_WARM_SANDBOX    [1]        0: a fresh sandbox interpreter per run instead of children
#                                       forked by a pre-imported one per slot (ADR 7)
#   CODEJAIL_CONFINEMENT     [enforce]  "off" turns our Landlock+seccomp layer off
#                                       (AppArmor-only hosts; the sabotage test run)
#   CODEJAIL_ALLOW_DEGRADED  [false]    run where the kernel lacks part of the policy
#   CODEJAIL_RUN_MEMORY_FACTOR [2]      a run's processes together may hold at most this many
#                                       times its VMEM (the layer's reaper ends it past that; 0: off)
#   CODEJAIL_RUN_CPU_FACTOR [3]         a run's processes together may use at most this many times
#                                       its CPU limit (RLIMIT_CPU, per process) of CPU time (0: off)
#   CODEJAIL_PIP_OPTIONS     []         extra pip options (e.g. --no-index --find-links DIR)
#   CODEJAIL_SANDBOX_PYTHON  [/usr/bin/python3.11]  the sandbox venv's Python (another one must
#                                       be installed already: Debian 12 has 3.11 only)
#   CODEJAIL_SANDBOX_REQUIREMENTS [the newest set for that Python]  the sandbox's packages: a set's
#                                       name from requirements/sandbox/sets.txt (the Open edX
#                                       platform's: current, current-py311, teak), or a pins file
#                                       of the operator's (absolute, or relative to this checkout)
#   CODEJAIL_EXTRA_PIP_REQUIREMENTS []  more packages for the sandbox venv, the operator's own
#                                       (pip requirement specifiers, space-separated), held to
#                                       the chosen set's versions
#   CODEJAIL_RUN_DIR_MIB     [64]       size of each pool slot's tmpfs for its runs; 0: none
#   CODEJAIL_RUN_DIR_ROOT    [/var/lib/codejail-service/runs]  where the slots' tmpfs are mounted
#   CODEJAIL_RUN_DIR_MOUNT   [host]     "host": this script mounts the slots' tmpfs; "runtime":
#                                       the container runtime does (docker run --tmpfs, compose
#                                       tmpfs:, a Kubernetes emptyDir), so an image build only
#                                       makes the mount points and points the service at them
#   CODEJAIL_SKIP_APT        []         1: the packages are known to be there
#   CODEJAIL_BLOCK_APP_EGRESS [0]       1: nftables drops all the app user sends but to loopback
#                                       (plain hosts; on Kubernetes the NetworkPolicy does it)
#   CODEJAIL_EGRESS_CHECK_TARGET []     host:port the webapp_egress startup check must fail
#                                       to reach (written to the config; default: settings')
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${CODEJAIL_PREFIX:-/opt/codejail-service}"
app_user="${CODEJAIL_APP_USER:-codejail-app}"
app_uid="${CODEJAIL_APP_UID:-180001}"
sandbox_user="${CODEJAIL_SANDBOX_USER:-codejail-sandbox}"
sandbox_uid="${CODEJAIL_SANDBOX_UID:-180100}"
pool_size="${CODEJAIL_SANDBOX_POOL_SIZE:-4}"
confinement="${CODEJAIL_CONFINEMENT:-enforce}"
# A size-limited tmpfs per pool slot for its runs' directories (MiB; 0: none, runs write to /tmp).
run_dir_mib="${CODEJAIL_RUN_DIR_MIB:-64}"
run_root="${CODEJAIL_RUN_DIR_ROOT:-/var/lib/codejail-service/runs}"
run_dir_mount="${CODEJAIL_RUN_DIR_MOUNT:-host}"
read -r -a extra_pip <<< "${CODEJAIL_EXTRA_PIP_REQUIREMENTS:-}"
allow_degraded="${CODEJAIL_ALLOW_DEGRADED:-false}"
run_memory_factor="${CODEJAIL_RUN_MEMORY_FACTOR:-2}"
run_cpu_factor="${CODEJAIL_RUN_CPU_FACTOR:-3}"
read -r -a pip_options <<< "${CODEJAIL_PIP_OPTIONS:-}"
python=/usr/bin/python3.11
sandbox_python="${CODEJAIL_SANDBOX_PYTHON:-/usr/bin/python3.11}"
sandbox_venv="$prefix/sandbox-venv"
app_venv="$prefix/venv"
etc=/etc/codejail-service

log() { echo "provision: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
case "$confinement" in enforce|off) ;; *) log "CODEJAIL_CONFINEMENT must be enforce or off"; exit 1;; esac
[[ "$pool_size" =~ ^[0-9]+$ ]] || { log "CODEJAIL_SANDBOX_POOL_SIZE must be a number"; exit 1; }
[[ "$run_dir_mib" =~ ^[0-9]+$ ]] || { log "CODEJAIL_RUN_DIR_MIB must be a number"; exit 1; }
case "$run_dir_mount" in host|runtime) ;; *) log "CODEJAIL_RUN_DIR_MOUNT must be host or runtime"; exit 1;; esac
[[ "$run_memory_factor" =~ ^[0-9]+([.][0-9]+)?$ ]] || { log "CODEJAIL_RUN_MEMORY_FACTOR must be a number"; exit 1; }
[[ "$run_cpu_factor" =~ ^[0-9]+([.][0-9]+)?$ ]] || { log "CODEJAIL_RUN_CPU_FACTOR must be a number"; exit 1; }
[ "$run_dir_mib" = 0 ] || [ "$pool_size" -gt 0 ] || { log "CODEJAIL_RUN_DIR_MIB needs a sandbox pool"; exit 1; }

# --- System packages -------------------------------------------------------
packages=(sudo python3.11 python3.11-venv libseccomp2 procps findutils ca-certificates)
[ "${CODEJAIL_BLOCK_APP_EGRESS:-0}" = 1 ] && packages+=(nftables)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ -n "${CODEJAIL_SKIP_APT:-}" ] && { log "missing packages: ${missing[*]}"; exit 1; }
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Users -------------------------------------------------------------------
# Large fixed UIDs: RLIMIT_NPROC counts every process of a UID on the whole host,
# across containers, so these must not be shared with anything else.
ensure_user() {  # name uid
    if ! getent group "$1" >/dev/null; then groupadd --gid "$2" "$1"; fi
    if ! id -u "$1" >/dev/null 2>&1; then
        useradd --uid "$2" --gid "$2" --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$1"
    fi
    [ "$(id -u "$1")" = "$2" ] || { log "user $1 exists with UID $(id -u "$1"), expected $2"; exit 1; }
}
ensure_user "$app_user" "$app_uid"
ensure_user "$sandbox_user" "$sandbox_uid"
# The pool: each run holds one of these users, a slot (codejail_service/sandbox/pool.py), so
# concurrent runs never share a process budget or see each other.
sandbox_users=("$sandbox_user")
for ((i = 0; i < pool_size; i++)); do
    ensure_user "$sandbox_user-$i" "$((sandbox_uid + 1 + i))"
    sandbox_users+=("$sandbox_user-$i")
done

# --- Run directories ---------------------------------------------------------
# RLIMIT_FSIZE caps one file; what a run may write in total is capped by giving each pool
# slot a tmpfs of its own (codejail_service/sandbox/pool.py, run_dir_parent), which
# also caps its inodes (kernel memory the size does not count). Mounted here, so again after
# a reboot by `make run`/provisioning; the run_dir_cap startup check refuses to run without.
# An image build cannot mount (CODEJAIL_RUN_DIR_MOUNT=runtime): it makes the mount points, and
# the container runtime mounts a size-limited tmpfs on each, owned by the app user (docs/
# deployment.rst: docker run --tmpfs, compose tmpfs:, a Kubernetes emptyDir of medium Memory).
run_dir_parents=(/tmp)
if [ "$run_dir_mib" != 0 ]; then
    install -d -m 0755 -o root -g root "$run_root"
    run_dir_parents=()
    for ((i = 0; i < pool_size; i++)); do
        dir="$run_root/$i"
        install -d -m 0755 "$dir"
        if [ "$run_dir_mount" = runtime ]; then
            :  # the runtime's tmpfs hides this directory; without one, run_dir_cap fails
        elif mountpoint -q "$dir"; then
            mount -o "remount,size=${run_dir_mib}m,nr_inodes=16384" "$dir"
        else
            mount -t tmpfs -o "size=${run_dir_mib}m,nr_inodes=16384,nosuid,nodev,noexec" "codejail-run-$i" "$dir"
        fi
        chown "$app_user:$app_user" "$dir"
        chmod 0755 "$dir"
        run_dir_parents+=("$dir")
    done
fi

# --- Sandbox venv ------------------------------------------------------------
# --copies: a real binary, so an AppArmor profile can attach to its path.
# Root-owned and read-only to the sandbox user.
stamp() { cat "$@" | sha256sum | cut -d' ' -f1; }
[ -x "$sandbox_python" ] || { log "CODEJAIL_SANDBOX_PYTHON: $sandbox_python is not an executable"; exit 1; }
sandbox_python_version="$("$sandbox_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
# The package set: its pins file and its name (requirements/sandbox/sets.txt, deploy/sandbox_sets.py).
chosen_set="$("$sandbox_python" "$src/deploy/sandbox_sets.py" resolve \
    "${CODEJAIL_SANDBOX_REQUIREMENTS:-}" "$sandbox_python_version")" || exit 1
sandbox_reqs="$(sed -n 1p <<< "$chosen_set")"
sandbox_set="$(sed -n 2p <<< "$chosen_set")"
extra_stamp="$sandbox_venv/.extra-requirements"
# The Python, by path and version, is part of the stamp: another one rebuilds the venv.
sandbox_stamp() { { stamp "$sandbox_reqs"; echo "$sandbox_python $sandbox_python_version"; } | stamp; }
if [ ! -x "$sandbox_venv/bin/python" ] || [ "$(cat "$sandbox_venv/.requirements-stamp" 2>/dev/null)" != "$(sandbox_stamp)" ] \
        || { [ -f "$extra_stamp" ] && [ "$(cat "$extra_stamp")" != "${extra_pip[*]}" ]; }; then
    log "building the sandbox venv in $sandbox_venv: Python $sandbox_python_version, packages $sandbox_set"
    rm -rf "$sandbox_venv"
    "$sandbox_python" -m venv --copies "$sandbox_venv"
    "$sandbox_venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check "${pip_options[@]}" \
        -r "$sandbox_reqs"
    sandbox_stamp > "$sandbox_venv/.requirements-stamp"
fi
# What the service reports as its sandbox's package set (codejail_service/apps/core/sandbox_versions.py).
echo "$sandbox_set" > "$sandbox_venv/.requirements-set"
# The operator's extra packages (CODEJAIL_EXTRA_PIP_REQUIREMENTS), on top. A changed list
# rebuilds the venv above (so a package dropped from the list is gone); an unchanged one costs nothing.
if [ ! -f "$extra_stamp" ]; then
    if [ ${#extra_pip[@]} -gt 0 ]; then
        log "installing the extra sandbox packages: ${extra_pip[*]}"
        # As constraints, pins without extras (pip refuses "lxml[html-clean]==..." there).
        constraints="$(mktemp)"
        sed -E 's/^([A-Za-z0-9._-]+)\[[^]]*\]/\1/' "$sandbox_reqs" > "$constraints"
        "$sandbox_venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check "${pip_options[@]}" \
            -c "$constraints" "${extra_pip[@]}"
        rm -f "$constraints"
    fi
    echo "${extra_pip[*]}" > "$extra_stamp"
fi
site_packages="$("$sandbox_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# The warm sandbox's zygotes start as this one (the same binary, by another path): AppArmor gives
# them their own profile (apparmor/, codejail_zygote), since its exec rules match paths only.
ln -f "$sandbox_venv/bin/python" "$sandbox_venv/bin/python-zygote"
# Our confinement layer, run by the .pth file before any submitted code.
rm -rf "$site_packages/codejail_confinement"
install -d -m 0755 "$site_packages/codejail_confinement"
install -m 0644 "$src"/codejail_service/confinement/*.py "$site_packages/codejail_confinement/"
install -m 0644 "$src/codejail_service/confinement/codejail-confinement.pth" "$site_packages/"
# setuptools' distutils-precedence.pth imports _distutils_hack at every interpreter start
# (about 3.5 M instructions, 5 % of a trivial run); the sandbox never builds packages.
rm -f "$site_packages/distutils-precedence.pth"
# matplotlib's font list, built once here into a read-only directory of the venv: the warm
# sandbox's zygote reads it as it preloads matplotlib (confinement/zygote.py, MATPLOTLIB_CACHE),
# instead of building it (~0.2 s per zygote) where it may not write.
mpl_cache="$sandbox_venv/share/codejail-matplotlib"
rm -rf "$mpl_cache"
install -d -m 0755 "$mpl_cache"
# Only matplotlib's own fonts: the sandbox may not read the system's (/usr/share/fonts).
MPLCONFIGDIR="$mpl_cache" MPLBACKEND=Agg "$sandbox_venv/bin/python" -S - "$site_packages" "$mpl_cache" <<'PY' \
    || log "could not build matplotlib's font list (is matplotlib in the sandbox requirements?)"
import os, sys
sys.path.append(sys.argv[1])
import matplotlib
from matplotlib import font_manager
manager = font_manager.fontManager
own = os.path.join(matplotlib.get_data_path(), "")
manager.ttflist = [font for font in manager.ttflist if font.fname.startswith(own)]
manager.afmlist = [font for font in manager.afmlist if font.fname.startswith(own)]
font_manager.json_dump(manager, os.path.join(sys.argv[2], f"fontlist-v{font_manager.FontManager.__version__}.json"))
PY
# Byte-compile as root, so runs (python -B) import from cached bytecode they cannot alter.
"$sandbox_venv/bin/python" -m compileall -q "$site_packages/codejail_confinement" "$site_packages" >/dev/null || true
chown -R root:root "$sandbox_venv"
chmod -R go-w "$sandbox_venv"

# --- App venv ----------------------------------------------------------------
app_reqs="$src/requirements/base.txt"
if [ ! -x "$app_venv/bin/python" ] || [ "$(cat "$app_venv/.requirements-stamp" 2>/dev/null)" != "$(stamp "$app_reqs")" ]; then
    log "building the app venv in $app_venv"
    rm -rf "$app_venv"
    "$python" -m venv "$app_venv"
    "$app_venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check "${pip_options[@]}" -r "$app_reqs"
    stamp "$app_reqs" > "$app_venv/.requirements-stamp"
fi
# The project itself, from this checkout (a wheel, not editable: the app user
# need not read the checkout).
build_dir="$(mktemp -d)"
# Only the sources: not the dev venv, git objects or tool caches (hundreds of MB).
tar -C "$src" --exclude=./.venv --exclude=./.git --exclude=./.cache --exclude=./docs/_build -cf - . \
    | tar -C "$build_dir" -xf -
"$app_venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check --no-deps \
    "${pip_options[@]}" --force-reinstall "$build_dir" >/dev/null
rm -rf "$build_dir"
chown -R root:root "$app_venv"
chmod -R go-w "$app_venv"

# --- Configuration -------------------------------------------------------------
install -d -m 0755 "$etc"
tmp_json="$(mktemp)"
# Written with json.dump, then read back by the layer's own loader (as every run reads it): a
# value the layer would refuse fails here, not in the first run.
"$python" - "$tmp_json" "$confinement" "$allow_degraded" "$run_memory_factor" "$run_cpu_factor" "${run_dir_parents[@]}" <<'PY'
import json
import sys

path, mode, allow_degraded, memory_factor, cpu_factor, *parents = sys.argv[1:]
booleans = {"true": True, "1": True, "false": False, "0": False}
if allow_degraded not in booleans:
    sys.exit(f"provision: CODEJAIL_ALLOW_DEGRADED must be true or false, not {allow_degraded!r}")


def number(text):
    return float(text) if "." in text else int(text)


config = {"mode": mode, "allow_degraded": booleans[allow_degraded], "run_dir_parent": parents,
          "run_memory_factor": number(memory_factor), "run_cpu_factor": number(cpu_factor)}
with open(path, "w", encoding="ascii") as config_file:
    json.dump(config, config_file)
    config_file.write("\n")
PY
install -m 0644 -o root -g root "$tmp_json" "$etc/confinement.json"
rm -f "$tmp_json"
"$sandbox_venv/bin/python" -S -c '
import sys
sys.path.insert(0, sys.argv[1])
import codejail_confinement
config = codejail_confinement.load_config(sys.argv[2])
assert config["mode"] == sys.argv[3], config
' "$site_packages" "$etc/confinement.json" "$confinement" \
    || { log "$etc/confinement.json does not load as the confinement layer reads it"; exit 1; }
if [ ! -f "$etc/config.yml" ] || grep -q '^# Managed by deploy/provision.sh' "$etc/config.yml"; then
    # CODE_JAIL's defaults (settings/base.py) match this script's defaults; a
    # YAML key replaces a setting whole, so give the full CODE_JAIL dict if you change it.
    {
        echo "# Managed by deploy/provision.sh: remove this line to keep your own edits."
        echo "CODEJAIL_ENABLED: true"
        echo "CODEJAIL_SANDBOX_POOL_SIZE: $pool_size"
        echo "CODEJAIL_ZYGOTE_PYTHON: $sandbox_venv/bin/python-zygote"
        echo "CODEJAIL_ZYGOTE_SCRIPT: $site_packages/codejail_confinement/zygote.py"
        if [ "${CODEJAIL_WARM_SANDBOX:-1}" = 1 ]; then
            echo "CODEJAIL_WARM_SANDBOX: true"
        else
            echo "CODEJAIL_WARM_SANDBOX: false"
        fi
        if [ "$run_dir_mib" != 0 ]; then
            echo "CODEJAIL_RUN_DIR_ROOT: $run_root"
            echo "CODEJAIL_RUN_DIR_MAX_BYTES: $((run_dir_mib * 1024 * 1024))"
        fi
        if [ -n "${CODEJAIL_EGRESS_CHECK_TARGET:-}" ]; then
            echo "CODEJAIL_EGRESS_CHECK: {host: \"${CODEJAIL_EGRESS_CHECK_TARGET%:*}\", port: ${CODEJAIL_EGRESS_CHECK_TARGET##*:}, timeout: 1.0}"
        fi
    } > "$etc/config.yml.new"
    install -m 0644 -o root -g root "$etc/config.yml.new" "$etc/config.yml"
    rm -f "$etc/config.yml.new"
fi

# --- sudo ------------------------------------------------------------------------
# The app may run exactly codejail's command lines as the sandbox user (pinned
# arguments: no -S or -I that would skip the confinement hook), and pkill as
# root for codejail's timeout. TMPDIR is the only variable codejail passes. A sandbox user
# may also be made to kill the process groups of its runs (what a run left, never its slot's
# zygote: docs/decisions/0009-run-bounds-across-processes.rst) or all its own processes (the
# last resort, and the service's stop), and to start its slot's zygote (CODEJAIL_WARM_SANDBOX,
# on by default: docs/decisions/0007-warm-sandbox.rst), which confines each run it forks with
# the same layer.
# Speed (make bench; docs/decisions/0005-run-cost-and-overload.rst): with no PAM session or setcred to close
# and no pty (codejail runs sudo with no terminal; Debian's default use_pty would only keep a
# monitor), sudo execs the sandbox python in place instead of forking and waiting for it:
# one process less per run, about 1 ms of CPU and half of sudo's wall time.
sudoers="$(mktemp)"
runas_users="$(IFS=,; echo "${sandbox_users[*]}")"
cat > "$sudoers" <<SUDOERS
# Managed by codejail-service deploy/provision.sh
Runas_Alias CODEJAIL_SANDBOX_USERS = $runas_users
Cmnd_Alias CODEJAIL_KILL_OWN = /usr/bin/kill -9 -1
Cmnd_Alias CODEJAIL_KILL_GROUPS = /usr/bin/kill -9 -- -*
Cmnd_Alias CODEJAIL_PYTHON = $sandbox_venv/bin/python -E -B jailed_code
Cmnd_Alias CODEJAIL_CLEANUP = /usr/bin/find /tmp/codejail-*/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} ;, \\
    /usr/bin/find $run_root/*/codejail-*/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} ;
Cmnd_Alias CODEJAIL_ZYGOTE = $sandbox_venv/bin/python-zygote -E -B -S $site_packages/codejail_confinement/zygote.py
Cmnd_Alias CODEJAIL_KILL = /usr/bin/pkill -9 -g *
Defaults!CODEJAIL_PYTHON env_keep = "TMPDIR", !pam_session, !pam_setcred, !use_pty
Defaults!CODEJAIL_CLEANUP !pam_session, !pam_setcred, !use_pty
Defaults!CODEJAIL_KILL_OWN !pam_session, !pam_setcred, !use_pty
Defaults!CODEJAIL_KILL_GROUPS !pam_session, !pam_setcred, !use_pty
Defaults!CODEJAIL_ZYGOTE !pam_session, !pam_setcred, !use_pty
$app_user ALL=(CODEJAIL_SANDBOX_USERS) NOPASSWD: CODEJAIL_PYTHON, CODEJAIL_CLEANUP, CODEJAIL_KILL_OWN, CODEJAIL_KILL_GROUPS, CODEJAIL_ZYGOTE
$app_user ALL=(root) NOPASSWD: CODEJAIL_KILL
SUDOERS
visudo -c -q -f "$sudoers"
install -m 0440 -o root -g root "$sudoers" /etc/sudoers.d/codejail-service
rm -f "$sudoers"
visudo -c -q
# codejail sets rlimits before sudo; pam_limits in sudo's session would reset them.
sed -i -E 's/^(session\s+required\s+pam_limits\.so)/# disabled for codejail-service: \1/' /etc/pam.d/sudo

# --- Web app egress --------------------------------------------------------------
# The app needs no outbound network (the LMS calls it; it calls nobody). Replacing
# the whole table keeps this idempotent.
if [ "${CODEJAIL_BLOCK_APP_EGRESS:-0}" = 1 ]; then
    nft -f - <<NFT
table inet codejail_service
delete table inet codejail_service
table inet codejail_service {
    chain output {
        type filter hook output priority 0; policy accept;
        meta skuid $app_uid oifname != "lo" counter drop
    }
}
NFT
fi

log "done: app venv $app_venv, sandbox venv $sandbox_venv (Python $sandbox_python_version, $sandbox_set), confinement $confinement, sandbox pool $pool_size"
