"""
The sandbox users' processes, as the web app sees them: the one reader of /proc, and every way
the app ends a run's processes.

Kill paths, from the first to fire to the last resort:

1. the run's reaper (codejail_service/confinement/reaper.py, inside the sandbox) ends every
   process of the run before its answer; it lives in the sandbox venv and reads /proc itself;
2. codejail's time limit (``ProcessKillerThread``: ``sudo pkill -9 -g <pgid>``), started here by
   ``watch``;
3. the backstop (``watch``): REALTIME + ``BACKSTOP_SECONDS`` later, every process of the slot's
   user, should the reaper have been beaten;
4. ``end_leftovers``: after the run, before its slot is released;
5. a slot's recovery (pool.py), when the worker that held it died: ``kill_processes_of``.

The confinement layer (codejail_service/confinement/) keeps its own /proc reading and its own
libc handle: it is installed on its own into the sandbox venv as ``codejail_confinement``, runs
as the sandbox user inside the run's processes, and imports nothing of the app.
"""

import ctypes
import functools
import logging
import os
import pwd
import subprocess
import threading
import time

from codejail.subproc import ProcessKillerThread

from codejail_service.sandbox import commands

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
# Seconds past REALTIME after which the slot's every process is killed, if the run still holds
# its pipes open then (a beaten reaper): well within the LMS's 3.5 s - REALTIME margin's reach.
BACKSTOP_SECONDS = 0.5
# How long a run's last processes may take to be gone once its output has closed.
LEFTOVER_GRACE_SECONDS = 0.5


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def become_child_subreaper():
    """
    Adopt the orphans of our runs, so that they are reaped at once (gunicorn's master reaps
    unknown children on SIGCHLD). A run killed whole by codejail's timeout (``pkill -9 -g``)
    loses its own reaper, and its processes re-parent to PID 1; an init that reaps lazily (one
    here reaped every ~2 s) leaves them as zombies that still count against the sandbox user's
    RLIMIT_NPROC, so the worker's next run could not even fork ("Resource temporarily
    unavailable").
    """
    if _libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("Could not become a child subreaper: %s", os.strerror(ctypes.get_errno()))


def stat_fields(pid):
    """
    The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session, ...),
    split after its closing parenthesis: a command name may hold spaces and parentheses.
    """
    with open(f"/proc/{pid}/stat", "rb") as stat_file:
        return stat_file.read().rsplit(b")", 1)[1].split()


def session_of(pid):
    """The session ID of ``pid``, or None if it is gone."""
    try:
        return int(stat_fields(pid)[3])
    except (OSError, ValueError, IndexError):
        return None


def command_line_ends_with(pid, suffix):
    """True when ``pid``'s command line ends with ``suffix`` (bytes); False if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().rstrip(b"\0").endswith(suffix)
    except OSError:
        return False


def processes_of(uid):
    """
    The PIDs of every live process of ``uid`` on the host, from /proc (about 0.4 ms). Zombies
    are left out: they hold nothing but their PID, and only their parent can remove them.
    """
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and stat_fields(name)[0] != b"Z":
                    pids.append(int(name))
            except (FileNotFoundError, ProcessLookupError):
                pass  # gone meanwhile (between the listing and the stat, or the stat and the read)
    return pids


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
    result = subprocess.run(commands.kill_own(user), capture_output=True, text=True, check=False)
    if result.returncode not in (0, 1) or "sudo" in result.stderr:
        log.error("Could not kill the processes of sandbox user %s: %s", user, result.stderr.strip())
        return False
    return True


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


def end_leftovers(user, killed, keep=()):
    """
    After a run, before its slot is released: nothing of the slot's ``user`` may be left running
    but its zygotes (``keep``: a zygote and its successor). The run's reaper ends every process
    of the run before the run's answer, so this finds nothing, unless the reaper itself was
    beaten; then, and after a run that was ``killed`` (its time limit, its memory bound), the
    slot is recovered like one whose worker died: every process of its user is killed, zygote
    included.
    """
    uid = uid_of(user)
    keep = set(keep)
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while left := [pid for pid in processes_of(uid) if pid not in keep]:
        if killed or time.monotonic() > deadline:
            log.warning("Sandbox user %s has processes %s left after its run: killing them all", user, left)
            kill_all_processes_of(user)
            return
        time.sleep(0.01)  # the reaper and the run's leader are exiting


class Watch:
    """
    A started run's time limit: codejail's killer thread (``sudo pkill -9 -g``) and, for a run
    in a pool slot, the backstop that kills every process of the slot's user a little later.
    """

    def __init__(self, process, realtime, backstop_user=None):
        self._backstop = None
        if not realtime:
            return
        ProcessKillerThread(process, limit=realtime).start()
        if backstop_user is not None:
            # Should the run's reaper be beaten (it ends what the time limit's `pkill -g` misses),
            # every process of the slot's user is killed shortly after: the answer still comes.
            self._backstop = threading.Timer(realtime + BACKSTOP_SECONDS, kill_all_processes_of,
                                             (backstop_user,))
            self._backstop.daemon = True
            self._backstop.start()

    def stop(self):
        """
        The run is over. A backstop that fired has ended its kill loop when this returns: else it
        could kill the next run's processes, or the zygote that run starts, in this slot.
        """
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop.join()
