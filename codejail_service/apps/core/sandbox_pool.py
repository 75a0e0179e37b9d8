"""
The sandbox user pool: one sandbox user per gunicorn worker, so runs do not share fate.

RLIMIT_NPROC counts every process of a UID on the whole host, and processes of one UID can see
each other. With a single sandbox user, a fork bomb in one request eats the process budget of
every concurrent request. With ``CODEJAIL_SANDBOX_POOL_SIZE`` = N > 0, deploy/provision.sh makes
N users named ``<CODE_JAIL["user"]>-<i>``; gunicorn's master gives each worker a slot ``i``
(codejail_service/gunicorn_config.py), and the worker hands codejail that slot's user. A sync
worker runs one request at a time, so each user runs at most one sandbox at a time and NPROC
can stay tight per run. With N = 0, every worker runs code as ``CODE_JAIL["user"]``, as plain
codejail does.
"""

import logging
import subprocess

from codejail import jail_code
from django.conf import settings

log = logging.getLogger(__name__)


def pool_users():
    """The pool's user names in slot order; empty when the pool is off."""
    base = settings.CODE_JAIL["user"]
    return [f"{base}-{slot}" for slot in range(settings.CODEJAIL_SANDBOX_POOL_SIZE)]


def sandbox_users():
    """Every user a worker may run code as: the pool, or the one configured user."""
    return pool_users() or [settings.CODE_JAIL["user"]]


def use_sandbox_user(user):
    """Make this process's later codejail runs (safe_exec) run as ``user``."""
    jail_code.configure("python", settings.CODE_JAIL["python_bin"], user=user)


def free_slot(used_slots):
    """The lowest pool slot not in ``used_slots``; RuntimeError when all are taken."""
    for slot in range(settings.CODEJAIL_SANDBOX_POOL_SIZE):
        if slot not in used_slots:
            return slot
    raise RuntimeError(
        f"No free sandbox user: all {settings.CODEJAIL_SANDBOX_POOL_SIZE} users of the pool are taken. "
        "Run at most CODEJAIL_SANDBOX_POOL_SIZE workers, or provision a bigger pool."
    )


def kill_processes_of(user):
    """
    SIGKILL every process ``user`` has (left over by a worker that died mid-run).

    Runs ``kill -9 -1`` as that user (sudoers allows exactly this): it reaches that user's
    processes only, whatever their process group. Returns True when sudo and kill succeeded;
    kill fails (status 1) when there was nothing to kill, which is fine too.
    """
    result = subprocess.run(
        ["sudo", "-n", "-u", user, "/usr/bin/kill", "-9", "-1"], capture_output=True, text=True, check=False
    )
    if result.returncode not in (0, 1) or "sudo" in result.stderr:
        log.error("Could not kill the processes of sandbox user %s: %s", user, result.stderr.strip())
        return False
    return True
