"""
Our kernel confinement layer for the sandbox python: Landlock + seccomp.

Installed into the sandbox virtualenv as the package ``codejail_confinement``
and run by its ``codejail-confinement.pth`` file while ``site`` starts, so
before the interpreter reads any submitted code. One job: apply the policy of
``policy.py`` to this process, fork the reaper, and let the code run. Stdlib
only; it never takes policy from the environment (sudo's SETENV lets the
caller set that).
"""
import functools
import json
import os
import resource
import stat
import sys

from . import landlock, process, reaper, seccomp
from .policy import RUN_DIR_PREFIX, build_policy, seccomp_policy

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
    # The most memory all of a run's processes may hold together, as a multiple of its
    # RLIMIT_AS (codejail's VMEM), enforced by the reaper's watchdog (reaper.py); or, when set,
    # "run_memory_bytes". 0 and no bytes: no bound beyond RLIMIT_AS per process.
    "run_memory_factor": 2,
    "run_memory_bytes": None,
    # The most CPU time all of a run's processes may use together, as a multiple of its
    # RLIMIT_CPU (codejail's CPU, per process), enforced by the same watchdog: 3 x 1 s is about
    # the default REALTIME (3 s) on one core. 0: no bound beyond RLIMIT_CPU per process.
    "run_cpu_factor": 3,
    # RLIMIT_NOFILE of a run's every process. With socket buffer sizes fixed (syscalls.py: no
    # SO_SNDBUF/SO_RCVBUF, no F_SETPIPE_SZ), it bounds the kernel memory a run can hold in
    # buffers, which no RSS shows: docs/decisions/0008-default-deny-sandbox.rst.
    "run_open_files": 64,
}
# Landlock features the policy needs, and the ABI that brought each.
REQUIRED_ABI = {"landlock.fs": 1, "landlock.net": 4, "landlock.scope": 6}
# Exit status of a run the layer refused to start (shown in codejail's emsg).
EXIT_REFUSED = 97

# Set by a warm sandbox's zygote in each run it forks: the address space it had mapped, which the
# run's RLIMIT_AS counts on top of (zygote.run_rlimits); the run's memory bound does not.
ADDRESS_SPACE_OFFSET = 0

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


def run_dir_parents(config):
    """``run_dir_parent`` as a list: one path, or one per sandbox slot."""
    parents = config["run_dir_parent"]
    return [parents] if isinstance(parents, str) else parents


def find_run_dir(config):
    """The working directory, if it really is a codejail run directory; else refuse."""
    cwd = os.getcwd()
    info = os.lstat(cwd)
    parent, name = os.path.split(cwd)
    parents = [os.path.realpath(path) for path in run_dir_parents(config)]
    if (parent not in parents or not name.startswith(RUN_DIR_PREFIX)
            or not stat.S_ISDIR(info.st_mode)
            # codejail's web app user made it; a directory we made ourselves is not a run dir.
            or info.st_uid in (0, os.geteuid()) or info.st_mode & stat.S_IWOTH):
        raise ConfinementRefused(f"working directory {cwd!r} is not a codejail run directory")
    return cwd


def _confine_this_process(config, reaper_reads_proc):
    """
    What every run's confinement starts with, in the process that will run the code or fork its
    reaper: no new privileges, not dumpable, Landlock to its run directory (with ``/proc`` for a
    reaper that reads it there), its descriptors limited; and its bounds stated.
    ``(status, policy, abi)``, or ``(status, None, None)`` with the layer off.
    """
    status = {"mode": config["mode"], "layers": [], "missing": [], "landlock_abi": None}
    if config["mode"] == "off":
        return status, None, None
    if len(os.listdir("/proc/self/task")) != 1:
        # Landlock binds only the calling thread: refuse rather than leave one free.
        raise ConfinementRefused("the interpreter is already multi-threaded")
    policy = build_policy(sys.prefix, find_run_dir(config))
    abi = status["landlock_abi"] = landlock.abi_version()
    status["missing"] = missing_features(config, abi)
    process.set_no_new_privs()
    process.set_not_dumpable()
    if abi:
        status["layers"] += landlock.restrict_self(policy["landlock"], abi, reaper=reaper_reads_proc)
    bound = reaper.memory_bound(config, ADDRESS_SPACE_OFFSET)
    status["memory_bound"] = {"kind": "watchdog", "bytes": bound} if bound else None
    cpu_seconds = reaper.cpu_bound(config)
    status["cpu_bound"] = {"kind": "watchdog", "seconds": cpu_seconds} if cpu_seconds else None
    _lower_limit(resource.RLIMIT_NOFILE, config["run_open_files"])
    return status, policy, abi


def confine(config):
    """Apply the policy to this process and start the reaper. Returns the status."""
    status, policy, abi = _confine_this_process(config, reaper_reads_proc=True)
    if policy is None:
        return status
    bound = status["memory_bound"] and status["memory_bound"]["bytes"]
    cpu_seconds = status["cpu_bound"] and status["cpu_bound"]["seconds"]
    # Three processes (reaper.py): this one, the leader, is what codejail's time limit kills;
    # the reaper outlives that kill and ends the run's every process; the code runs below it.
    leader, group = os.getpid(), os.getpgrp()
    reaper_pid = os.fork()
    if reaper_pid:
        reaper.wait_for_reaper(reaper_pid)  # never returns
    reaper.leave_the_leader(leader)
    if abi:
        landlock.restrict_nested(policy["landlock"], abi)  # its kill(-1) cannot reach the leader
    program = runs_seccomp_program()
    # Its baseline is what the code's process is born with: the reaper's memory, now.
    watchdog = reaper.RunWatchdog(bound, cpu_seconds) if bound or cpu_seconds else None
    child = os.fork()
    if child:
        seccomp.load_program(program)
        reaper.supervise(child, leader, watchdog)  # never returns
    # The code: back in the leader's process group, so codejail's time-limit kill reaches it.
    os.setpgid(0, group)
    reaper.code_starts()
    status["layers"] += seccomp.load_program(program)
    status["layers"].append("reaper")
    if abi:
        landlock.restrict_nested(policy["landlock"], abi, code=True)
    return status


def confine_forked(config):
    """
    Confine a run forked by a warm sandbox's zygote, which reaps it (zygote.supervise_run, from the
    same rlimits, so the bounds stated here are the ones it enforces): the code runs in this
    process, in a Landlock domain nested in the zygote's (its run directory only, no ``/proc``, no
    signal out of it), under the runs' seccomp filter. Returns the status.
    """
    status, policy, _ = _confine_this_process(config, reaper_reads_proc=False)
    if policy is None:
        return status
    status["layers"] += seccomp.load_program(runs_seccomp_program())
    status["layers"].append("reaper")  # the zygote
    return status


@functools.cache
def runs_seccomp_program():
    """
    The runs' seccomp filter, compiled once per process: a zygote compiles it as it starts
    (``confine_zygote``), and every run it forks loads it as it is (about 1.5 ms a run less).
    """
    return seccomp.compile_program(seccomp_policy())


def _lower_limit(limit, value):
    """Lower an rlimit of this process (soft and hard) to ``value``; never raise one."""
    soft, hard = resource.getrlimit(limit)
    value = min(value, hard) if hard != resource.RLIM_INFINITY else value
    resource.setrlimit(limit, (min(soft, value) if soft != resource.RLIM_INFINITY else value, value))


def missing_features(config, abi):
    """What the policy needs that the kernel lacks; refused unless the operator allowed it."""
    missing = [f"{feature} (Landlock ABI {needed}, kernel has {abi})"
               for feature, needed in REQUIRED_ABI.items() if abi < needed]
    if missing and not config["allow_degraded"]:
        raise ConfinementRefused("kernel lacks " + "; ".join(missing))
    return missing


def confine_zygote(config, user):
    """
    Confine the warm sandbox's zygote (zygote.py), before it imports anything: read-only code
    and its own slot's run root (``zygote_run_root``), the runs' seccomp filter plus what
    starting a run needs (syscalls.ZYGOTE_EXTRA). Each run it forks confines itself further
    (``confine``), to its own run directory and the runs' filter alone.
    """
    if config["mode"] == "off":
        return
    abi = landlock.abi_version()
    missing_features(config, abi)
    policy = build_policy(sys.prefix, zygote_run_root(config, user))
    process.set_no_new_privs()
    process.set_not_dumpable()
    if abi:
        landlock.restrict_self(policy["landlock"], abi, reaper=True)  # its runs' reapers read /proc
    seccomp.load(seccomp_policy(zygote=True))
    runs_seccomp_program()


def zygote_run_root(config, user):
    """
    The directory where the runs of ``user``'s slot are made: ``run_dir_parent``'s entry for
    the slot (pool users are named ``<base>-<slot>``), or its only entry.
    """
    parents = run_dir_parents(config)
    if len(parents) == 1:
        return parents[0]
    slot = user.rpartition("-")[2]
    if not slot.isdigit() or int(slot) >= len(parents):
        raise ConfinementRefused(f"no run directory for sandbox user {user!r} in run_dir_parent")
    return parents[int(slot)]


def confine_from_site():
    """Entry point for the .pth file: confine, or end the process before any code runs."""
    if os.geteuid() == 0:
        return  # root runs pip in the sandbox venv while provisioning; never a sandbox run
    if STATUS["mode"] != "not-run":
        return  # site met the .pth twice (Debian's venv lists site-packages twice)
    confine_or_exit()


def confine_or_exit(config=None, forked=False, **status):
    """
    Confine this process (with ``config``, else the operator's; ``forked``: a run a zygote forked,
    ``confine_forked``), recording ``status`` too; or end it, saying why, with EXIT_REFUSED,
    before any submitted code runs.
    """
    try:
        config = load_config() if config is None else config
        STATUS.update(confine_forked(config) if forked else confine(config), **status)
    except BaseException as exc:  # pylint: disable=broad-except
        os.write(2, f"codejail confinement refused to run: {exc}\n".encode())
        os._exit(EXIT_REFUSED)
