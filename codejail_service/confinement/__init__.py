"""
Our kernel confinement layer for the sandbox python: Landlock + seccomp.

Installed into the sandbox virtualenv as the package ``codejail_confinement``
and run by its ``codejail-confinement.pth`` file while ``site`` starts, so
before the interpreter reads any submitted code. One job: apply the policy of
``policy.py`` to this process, fork the reaper, and let the code run. Stdlib
only; it never takes policy from the environment (sudo's SETENV lets the
caller set that).
"""
import json
import os
import stat
import sys

from . import landlock, process, reaper, seccomp
from .policy import RUN_DIR_PREFIX, build_policy

CONFIG_PATH = "/etc/codejail-service/confinement.json"
DEFAULTS = {
    # "enforce": confine or refuse to run; "off": no confinement by this layer
    # (only for hosts where AppArmor confines, and for the sabotage test run).
    "mode": "enforce",
    # Run anyway, reporting the layer as degraded, when the kernel lacks part of
    # what the policy needs (e.g. Landlock ABI < 6). Off: fail closed.
    "allow_degraded": False,
    # Where codejail's run directories are made (the app's tempfile.gettempdir()):
    # one path, or a list (one size-limited directory per sandbox slot).
    "run_dir_parent": "/tmp",
}
# Landlock features the policy needs, and the ABI that brought each.
REQUIRED_ABI = {"landlock.fs": 1, "landlock.net": 4, "landlock.scope": 6}
# Exit status of a run the layer refused to start (shown in codejail's emsg).
EXIT_REFUSED = 97

# What was applied to this process; sandboxed code (and /health/) can read it.
STATUS = {"mode": "not-run", "layers": [], "missing": [], "landlock_abi": None}


class ConfinementRefused(Exception):
    """The layer could not confine this process as configured: do not run."""


def load_config(path=CONFIG_PATH):
    """Read the operator's root-owned config; a file others could write is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return dict(DEFAULTS)
    with os.fdopen(fd) as config_file:
        info = os.fstat(config_file.fileno())
        if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfinementRefused(f"{path} must be owned by root and writable by root only")
        config = {**DEFAULTS, **json.load(config_file)}
    if config["mode"] not in ("enforce", "off"):
        raise ConfinementRefused(f"{path}: mode must be 'enforce' or 'off'")
    return config


def find_run_dir(config):
    """The working directory, if it really is a codejail run directory; else refuse."""
    cwd = os.getcwd()
    info = os.lstat(cwd)
    parent, name = os.path.split(cwd)
    parents = config["run_dir_parent"]
    parents = [parents] if isinstance(parents, str) else parents
    if (parent not in [os.path.realpath(path) for path in parents] or not name.startswith(RUN_DIR_PREFIX)
            or not stat.S_ISDIR(info.st_mode)
            # codejail's web app user made it; a directory we made ourselves is not a run dir.
            or info.st_uid in (0, os.geteuid()) or info.st_mode & stat.S_IWOTH):
        raise ConfinementRefused(f"working directory {cwd!r} is not a codejail run directory")
    return cwd


def confine(config):
    """Apply the policy to this process and start the reaper. Returns the status."""
    status = {"mode": config["mode"], "layers": [], "missing": [], "landlock_abi": None}
    if config["mode"] == "off":
        return status
    if len(os.listdir("/proc/self/task")) != 1:
        # Landlock binds only the calling thread: refuse rather than leave one free.
        raise ConfinementRefused("the interpreter is already multi-threaded")
    policy = build_policy(sys.prefix, find_run_dir(config))
    abi = landlock.abi_version()
    status["landlock_abi"] = abi
    status["missing"] = [f"{feature} (Landlock ABI {needed}, kernel has {abi})"
                         for feature, needed in REQUIRED_ABI.items() if abi < needed]
    if status["missing"] and not config["allow_degraded"]:
        raise ConfinementRefused("kernel lacks " + "; ".join(status["missing"]))
    process.set_no_new_privs()
    process.set_not_dumpable()
    if abi:
        status["layers"] += landlock.restrict_self(policy["landlock"], abi)
    status["layers"] += seccomp.load(policy["seccomp"])
    process.become_subreaper()
    child = os.fork()
    if child:
        reaper.supervise(child)  # never returns
    status["layers"].append("reaper")
    if abi:
        landlock.restrict_nested(policy["landlock"], abi)
    return status


def confine_from_site():
    """Entry point for the .pth file: confine, or end the process before any code runs."""
    if os.geteuid() == 0:
        return  # root runs pip in the sandbox venv while provisioning; never a sandbox run
    if STATUS["mode"] != "not-run":
        return  # site met the .pth twice (Debian's venv lists site-packages twice)
    confine_or_exit()


def confine_or_exit(config=None, **status):
    """
    Confine this process (with ``config``, else the operator's), recording ``status`` too; or
    end it, saying why, with EXIT_REFUSED, before any submitted code runs.
    """
    try:
        STATUS.update(confine(load_config() if config is None else config), **status)
    except BaseException as exc:  # pylint: disable=broad-except
        os.write(2, f"codejail confinement refused to run: {exc}\n".encode())
        os._exit(EXIT_REFUSED)
