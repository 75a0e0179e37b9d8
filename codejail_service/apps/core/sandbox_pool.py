"""
The sandbox user pool: each run holds one sandbox user of the pool, so runs do not share fate.

RLIMIT_NPROC counts every process of a UID on the whole host, and processes of one UID can see
each other. With a single sandbox user, a fork bomb in one request eats the process budget of
every concurrent request. With ``CODEJAIL_SANDBOX_POOL_SIZE`` = N > 0, deploy/provision.sh makes
N users named ``<CODE_JAIL["user"]>-<i>``: the pool's *slots*. A run first takes a free slot
(``acquire_any``, from the admission gate), and codejail runs its code as that slot's user
(``sandbox_command``). No two runs hold one slot, so NPROC can stay tight per run; the number of
slots is the service's number of concurrent runs.

A slot is held by an exclusive ``flock`` on its lock file, in a directory private to the app
user (``CODEJAIL_SLOT_DIR``). The kernel drops the lock when its holder dies, so a worker killed
mid-run frees its slot at once; the lock file still names the run directory of that run, and
whoever takes the slot next (gunicorn's master, in ``child_exit``, or the next run) first kills
the slot user's processes and removes that directory (``_recover``). Every worker and every
service on the host that uses the same directory shares the pool safely.

With N = 0, every run is codejail's plain run as ``CODE_JAIL["user"]``: one run at a time per
worker process, and nothing to recover.
"""

import fcntl
import functools
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# codejail's run directories are tempfile.mkdtemp(prefix=RUN_DIR_PREFIX): the layer checks it too.
from codejail_service.confinement.policy import RUN_DIR_PREFIX

log = logging.getLogger(__name__)

# codejail's cleanup of a run's tmp/ after ``sudo -u <user> /usr/bin/find <run>/tmp``; sudoers
# allows exactly this (deploy/provision.sh).
CLEANUP_ARGS = ["-mindepth", "1", "-maxdepth", "1", "-exec", "rm", "-rf", "{}", ";"]

_held = threading.local()
# Without a pool: one run at a time in this process (as one sync worker would run them).
_process_turn = threading.Lock()


def pool_users():
    """The pool's user names in slot order; empty when the pool is off."""
    base = settings.CODE_JAIL["user"]
    return [f"{base}-{slot}" for slot in range(settings.CODEJAIL_SANDBOX_POOL_SIZE)]


class Slot:
    """A held slot: its user, and the lock file that says which run directory it uses."""

    def __init__(self, index, user, fd):
        self.index = index
        self.user = user
        self._fd = fd

    def record_run_dir(self, path):
        """Note the run's directory, for whoever recovers the slot if this process dies."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, os.fsencode(path), 0)

    def release(self):
        """The run is over (its directory removed): free the slot."""
        if getattr(_held, "slot", None) is self:
            _held.slot = None
        if self._fd is None:
            _process_turn.release()
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # drops the flock
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()


def slot_dir():
    """
    The directory of the slots' lock files: made if missing, refused unless private to us.
    Checked at every use (two system calls): a temp-directory cleaner may remove it meanwhile.
    """
    path = settings.CODEJAIL_SLOT_DIR or os.path.join(
        tempfile.gettempdir(), f"codejail_service-slots.{os.geteuid()}"
    )
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise ImproperlyConfigured(
            f"CODEJAIL_SLOT_DIR {path!r} must be a directory owned by the app user with mode 0700"
        )
    return path


def run_dir_parent(slot):
    """
    Where ``slot``'s runs make their directories: ``<CODEJAIL_RUN_DIR_ROOT>/<index>`` (a
    size-limited filesystem per slot, which caps what one run may write), or the temp directory.
    """
    root = settings.CODEJAIL_RUN_DIR_ROOT
    if root and slot is not None and slot.index is not None:
        return os.path.join(root, str(slot.index))
    return tempfile.gettempdir()


def try_acquire(index):
    """Take slot ``index`` if it is free (recovering what a dead holder left); else None."""
    user = pool_users()[index]
    fd = os.open(os.path.join(slot_dir(), f"{user}.lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        # A new open file description each time: threads of one process exclude each other too.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    slot = Slot(index, user, fd)
    try:
        left = os.pread(fd, 4096, 0)
        if left:
            _recover(slot, os.fsdecode(left))
            os.ftruncate(fd, 0)
    except BaseException:
        slot.release()
        raise
    return slot


def acquire_any():
    """Take the lowest free slot for this thread's run (a context manager); None if none is free."""
    if not settings.CODEJAIL_SANDBOX_POOL_SIZE:
        if not _process_turn.acquire(blocking=False):
            return None
        slot = Slot(None, settings.CODE_JAIL["user"], None)
    else:
        slot = next(filter(None, map(try_acquire, range(settings.CODEJAIL_SANDBOX_POOL_SIZE))), None)
    _held.slot = slot
    return slot


def acquire(index, timeout=10.0):
    """Take slot ``index`` for this thread, waiting at most ``timeout`` s (startup checks, in the master)."""
    deadline = time.monotonic() + timeout
    while (slot := try_acquire(index)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sandbox slot {index} stayed busy for {timeout} s")
        time.sleep(0.05)
    _held.slot = slot
    return slot


def held_slot():
    """The slot this thread holds, or None."""
    return getattr(_held, "slot", None)


def sandbox_command(cmd):
    """
    ``cmd`` as codejail built it (``sudo -u <CODE_JAIL user> ...``), run as the held slot's user.

    With a pool, a run that holds no slot is refused: it would run as the shared base user.
    """
    if not settings.CODEJAIL_SANDBOX_POOL_SIZE or cmd[:2] != ["sudo", "-u"]:
        return cmd
    slot = held_slot()
    if slot is None:
        raise RuntimeError("codejail run outside a sandbox slot (admission.GATE or sandbox_pool.acquire)")
    if cmd[2] != settings.CODE_JAIL["user"]:
        raise RuntimeError(f"unexpected codejail command line: {cmd[:3]}")
    return [*cmd[:2], slot.user, *cmd[3:]]


def free_slots():
    """Each slot free now, held (and so recovered, if a dead holder left it) until the next one."""
    for index in range(settings.CODEJAIL_SANDBOX_POOL_SIZE):
        slot = try_acquire(index)
        if slot is not None:
            with slot:
                yield slot


def recover_free_slots():
    """Recover every free slot a dead holder left (gunicorn's master, when a worker is gone)."""
    for _ in free_slots():
        pass


def _recover(slot, run_dir):
    """A holder died mid-run: end what its run left running, then remove its run directory."""
    user = slot.user
    log.warning("Sandbox user %s was left mid-run in %s: killing its processes, removing the directory",
                user, run_dir)
    kill_processes_of(user)
    parent = os.path.realpath(run_dir_parent(slot))
    if os.path.dirname(run_dir) != parent or not os.path.basename(run_dir).startswith(RUN_DIR_PREFIX):
        log.error("Not removing %r: not a codejail run directory in %s", run_dir, parent)
        return
    try:
        info = os.lstat(run_dir)
    except FileNotFoundError:
        return  # the holder died after codejail removed it
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        log.error("Not removing %r: not a directory of the app user", run_dir)
        return
    tmp = os.path.join(run_dir, "tmp")
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        # What the sandbox user wrote may be removable only by that user: codejail's own cleanup.
        subprocess.run(["sudo", "-n", "-u", user, "/usr/bin/find", tmp, *CLEANUP_ARGS],
                       capture_output=True, check=False)
    shutil.rmtree(run_dir, onerror=lambda *error: log.error("Removing %s: %s", run_dir, error[2][1]))


def processes_of(uid):
    """
    The PIDs of every live process of ``uid`` on the host, from /proc (about 0.4 ms). Zombies
    are left out: they hold nothing but their PID, and only their parent can remove them.
    """
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and not _is_zombie(name):
                    pids.append(int(name))
            except (FileNotFoundError, ProcessLookupError):
                pass  # gone meanwhile (between the listing and the stat, or the stat and the read)
    return pids


def _is_zombie(pid):
    return stat_fields(pid)[0] == b"Z"


def stat_fields(pid):
    """
    The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session, ...),
    split after its closing parenthesis: a command name may hold spaces and parentheses.
    """
    with open(f"/proc/{pid}/stat", "rb") as stat_file:
        return stat_file.read().rsplit(b")", 1)[1].split()


def end_leftovers(slot, killed, keep=None):
    """
    After a run, before its slot is released: nothing of the slot's user may be left running
    but its zygotes (``keep``: a PID, or PIDs: a zygote and its successor). The run's reaper
    ends every process of the run before the run's
    answer, so this finds nothing, unless the reaper itself was beaten; then, and after a run
    that was ``killed`` (its time limit, its memory bound), the slot is recovered like one
    whose worker died: every process of its user is killed, zygote included.
    """
    uid = uid_of(slot.user)
    keep = {keep} if isinstance(keep, int) else set(keep or ())
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while left := [pid for pid in processes_of(uid) if pid not in keep]:
        if killed or time.monotonic() > deadline:
            log.warning("Sandbox user %s has processes %s left after its run: killing them all", slot.user, left)
            kill_all_processes_of(slot.user)
            return
        time.sleep(0.01)  # the reaper and the run's leader are exiting


# How long a run's last processes may take to be gone once its output has closed.
LEFTOVER_GRACE_SECONDS = 0.5


def kill_all_processes_of(user, timeout=5.0):
    """``kill_processes_of`` until none is left (kill(-1) is atomic: a fork chain cannot outrun it)."""
    uid = uid_of(user)
    deadline = time.monotonic() + timeout
    while processes_of(uid):
        if time.monotonic() > deadline:
            log.error("Processes of sandbox user %s survive being killed: %s", user, processes_of(uid))
            return False
        kill_processes_of(user)
        time.sleep(0.01)  # SIGKILL is delivered when the process next runs
    return True


@functools.cache
def uid_of(user):
    return pwd.getpwnam(user).pw_uid


def kill_processes_of(user):
    """
    SIGKILL every process ``user`` has (left over by a run whose worker died).

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
