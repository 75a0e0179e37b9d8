"""
The sandbox user pool: each run holds one sandbox user of the pool, so runs do not share fate.

RLIMIT_NPROC counts every process of a UID on the whole host, and processes of one UID can see
each other. With a single sandbox user, a fork bomb in one request eats the process budget of
every concurrent request. With ``CODEJAIL_SANDBOX_POOL_SIZE`` = N > 0, deploy/provision.sh makes
N users named ``<CODE_JAIL["user"]>-<i>``: the pool's *slots*. A run first takes a free slot
(``acquire_any``, from the admission gate, which hands out the ``Run`` that holds it: run.py),
and the run's processes are that slot's user's. No two runs hold one slot, so NPROC can stay
tight per run; the number of slots is the service's number of concurrent runs.

A slot is held by an exclusive ``flock`` on its lock file, in a directory private to the app
user (``CODEJAIL_SLOT_DIR``). The kernel drops the lock when its holder dies, so a worker killed
mid-run frees its slot at once; the lock file still names the run directory of that run, and
whoever takes the slot next (gunicorn's master, in ``child_exit``, or the next run) first kills
what that run left (its process groups: processes.end_run_processes; the slot's zygote stays) and
removes that directory (``_recover``). Every worker and every
service on the host that uses the same directory shares the pool safely.

With N = 0, every run is codejail's plain run as ``CODE_JAIL["user"]``: one run at a time per
worker process, and nothing to recover.
"""

import fcntl
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time

from django.core.exceptions import ImproperlyConfigured

# codejail's run directories are tempfile.mkdtemp(prefix=RUN_DIR_PREFIX): the layer checks it too.
from codejail_service.confinement.policy import RUN_DIR_PREFIX
from codejail_service.sandbox import commands, config, processes

log = logging.getLogger(__name__)

# Without a pool: one run at a time in this process (as one sync worker would run them).
_process_turn = threading.Lock()


def pool_users():
    """The pool's user names in slot order; empty when the pool is off."""
    return config.current().pool_users()


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
    path = config.current().slot_dir or os.path.join(
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
    root = config.current().run_dir_root
    if root and slot.index is not None:
        return os.path.join(root, str(slot.index))
    return tempfile.gettempdir()


def make_run_dir(slot):
    """A new run directory for ``slot``'s run, noted in the slot from the moment it exists."""
    path = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=run_dir_parent(slot))
    slot.record_run_dir(path)  # for whoever recovers the slot, should this process die
    return path


def is_run_dir(slot, path):
    """True when ``path`` is named as ``make_run_dir`` names ``slot``'s run directories."""
    return (os.path.dirname(path) == os.path.realpath(run_dir_parent(slot))
            and os.path.basename(path).startswith(RUN_DIR_PREFIX))


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


def _turn():
    """This process's one turn, just taken, as a slot of the base user (without a pool)."""
    return Slot(None, config.current().base_user, None)


def acquire_any():
    """
    Take the lowest free slot, or this process's one turn without a pool (a context manager);
    None if none is free.
    """
    size = config.current().pool_size
    if not size:
        if not _process_turn.acquire(blocking=False):
            return None
        return _turn()
    return next(filter(None, map(try_acquire, range(size))), None)


class Place:
    """
    A request's place in the line for a slot, shared by every worker that shares the pool (or,
    without a pool, by this process's requests: ``in_line``): a file in ``<slot dir>/line``,
    named by when it was taken and by whom. Slots are taken in that order: only the ``first`` may try, and
    a request that finds anyone in line joins it (admission.py). A line kept in memory would
    be one per worker: requests of one would take slots before older ones of another.

    A place whose process has gone, or older than ``STALE_SECONDS``, is nobody's: removed.
    """

    def __init__(self):
        self.line = _line()
        self.name = f"{time.monotonic_ns():020d}.{os.getpid()}.{threading.get_ident()}"
        os.close(os.open(os.path.join(self.line, self.name), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                         0o600))

    def first(self):
        """True when no place taken before this one is still held."""
        return not any(name < self.name for name in in_line())

    def leave(self):
        try:
            os.unlink(os.path.join(self.line, self.name))
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.leave()


# How long a place in line may be held: a request waits at most the LMS's deadline (3.5 s).
STALE_SECONDS = 10.0


def _line():
    """The directory of the line for a slot (``Place``), made if missing."""
    path = os.path.join(slot_dir(), "line")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    return path


def in_line():
    """
    The names of the places held in the line for a slot, oldest first (without a pool, this
    process's only: its one turn is all they wait for); stale ones removed.
    """
    line = _line()
    ours = None if config.current().pool_size else os.getpid()
    held = []
    now = time.monotonic_ns()
    for name in sorted(os.listdir(line)):
        try:
            taken, pid, _ = name.split(".")
            alive = now - int(taken) < STALE_SECONDS * 1e9 and _process_exists(int(pid))
        except ValueError:
            alive = False
        if alive:
            if ours in (None, int(pid)):
                held.append(name)
            continue
        try:
            os.unlink(os.path.join(line, name))
        except FileNotFoundError:
            pass
    return held


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(index, timeout=10.0):
    """
    Take slot ``index`` (None: this process's turn, without a pool), waiting at most ``timeout``
    s (the startup checks, in the master).
    """
    deadline = time.monotonic() + timeout
    if index is None:
        if not _process_turn.acquire(timeout=timeout):
            raise TimeoutError(f"this process's turn stayed busy for {timeout} s")
        return _turn()
    while (slot := try_acquire(index)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sandbox slot {index} stayed busy for {timeout} s")
        time.sleep(0.05)
    return slot


def free_slots():
    """Each slot free now, held (and so recovered, if a dead holder left it) until the next one."""
    for index in range(config.current().pool_size):
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
    log.warning("Sandbox user %s was left mid-run in %s: killing its run's processes, removing the directory",
                user, run_dir)
    processes.end_run_processes(user)  # the slot's zygote stays
    if not is_run_dir(slot, run_dir):
        log.error("Not removing %r: not a codejail run directory in %s", run_dir, run_dir_parent(slot))
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
        subprocess.run(commands.cleanup(user, tmp), capture_output=True, check=False)
    shutil.rmtree(run_dir, onerror=lambda *error: log.error("Removing %s: %s", run_dir, error[2][1]))
