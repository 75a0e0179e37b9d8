"""
The sandbox users' processes, as the web app sees them: the one reader of /proc, and every way
the app ends a run's processes.

Kill paths, from the first to fire to the last resort:

1. the run's reaper (codejail_service/confinement/reaper.py, inside the sandbox) ends every
   process of the run before its answer (a warm run's zygote kills them then, and reaps them
   after); it lives in the sandbox venv and reads /proc itself;
2. codejail's time limit (``ProcessKillerThread``: ``sudo pkill -9 -g <pgid>``), started here by
   ``watch``;
3. the backstop (``watch``): REALTIME + ``BACKSTOP_SECONDS`` later, the process groups of the
   slot's runs (``end_run_processes``), should the reaper have been beaten;
4. ``end_leftovers``: after the run's answer, before its slot is released, the same;
5. a slot's recovery (pool.py), when the worker that held it died: the same.

None of them reaches the slot's zygote: 3 to 5 kill the process groups of the runs' own sessions
(``run_groups_of``), as the sandbox user, and a zygote is in the service's session. Only where a
run's processes keep making new groups (possible without our layer) do they fall back to
``kill -9 -1`` as the user, zygote included (``kill_processes_of``, also the service's stop).

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
# Seconds past REALTIME after which the process groups of the slot's runs are killed, if the run
# still holds its pipes open then (a beaten reaper): well within the LMS's 3.5 s - REALTIME margin.
BACKSTOP_SECONDS = 0.5
# How long a run's last processes may take to be gone once its output has closed (the reaper
# empties tmp/ after it has ended the rest), killed at the time limit or not.
LEFTOVER_GRACE_SECONDS = 0.5
# How long the kills of a run's process groups may go on finding new groups before every process
# of the slot's user is killed at once (``end_run_processes``).
KILL_GROUPS_SECONDS = 1.0
# How long killed processes of a run may take to exit before ``end_run_processes`` gives up on them.
EXIT_WAIT_SECONDS = 5.0


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


def stat_fields(pid, thread=None):
    """
    The fields of /proc/<pid>/stat (of /proc/<pid>/task/<thread>/stat, given a ``thread``) after
    the command name (state, ppid, pgrp, session, ...), split after its closing parenthesis: a
    command name may hold spaces and parentheses.
    """
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path, "rb") as stat_file:
        return stat_file.read().rsplit(b")", 1)[1].split()


# /proc/<pid>/stat states of a task that has exited: a zombie (its parent has not waited for it
# yet) and a dead one (being removed).
EXITED = (b"Z", b"X")
_unreadable_threads_said = []  # said once per process (``_has_a_live_thread``)


def _has_a_live_thread(pid):
    """
    True while any thread of ``pid`` runs. A process whose main thread has exited shows as a zombie
    in /proc/<pid>/stat while its other threads run on: only /proc/<pid>/task/*/stat tells. Where
    the app may not read them (an AppArmor profile without its rules for them), it says so once and
    takes the zombie for what it reads as: counting it would keep a mere zombie a leftover, and end
    the slot's zygote with the last resort.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except PermissionError as exc:
        if not _unreadable_threads_said:
            _unreadable_threads_said.append(pid)
            log.error("Cannot tell whether a zombie of a sandbox user has a live thread: %s", exc)
        return False
    for thread in threads:
        try:
            if stat_fields(pid, thread)[0] not in EXITED:
                return True
        except (FileNotFoundError, ProcessLookupError):
            pass  # that thread is gone meanwhile
    return False


def _live_processes_of(uid):
    """``(pid, stat fields)`` of every live process of ``uid`` (see ``processes_of``)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                fields = stat_fields(name)
                if fields[0] not in EXITED or _has_a_live_thread(name):
                    found.append((int(name), fields))
            except (FileNotFoundError, ProcessLookupError):
                pass  # gone meanwhile (between the listing and the stat, or the stat and the read)
    return found


def processes_of(uid):
    """
    The PIDs of every live process of ``uid`` on the host, from /proc (about 0.4 ms): every process
    that has a live thread. Zombies are left out: they hold nothing but their PID, and only their
    parent can remove them.
    """
    return [pid for pid, _ in _live_processes_of(uid)]


def run_groups_of(uid):
    """
    ``{process group: [PIDs]}`` of the live processes of ``uid`` that belong to runs: those in a
    run's session (``is_a_runs_session``).

    A slot's zygote stays in the service's session (the app starts it without a session of its
    own, and gunicorn's master and workers share one); every run takes a session of its own
    (codejail's ``setsid`` for a fresh run, the zygote's for a forked one), and no process of a
    run can take another (seccomp refuses ``setsid`` and ``setpgid`` to the run's code; the
    reaper takes its own group once, before its filter, in the run's session). A process group
    lies within one session, so killing these groups never reaches a zygote.
    """
    ours = os.getsid(0)
    runs_sessions = {}
    groups = {}
    for pid, fields in _live_processes_of(uid):
        session = int(fields[3])
        if session not in runs_sessions:
            runs_sessions[session] = is_a_runs_session(session, uid, ours)
        if runs_sessions[session]:
            groups.setdefault(int(fields[2]), []).append(pid)
    return groups


def is_a_runs_session(session, uid, ours):
    """
    True when ``session`` (of a process of ``uid``) is a run's: not this service's (``ours``),
    and led by a process of ``uid`` (a run's leader) or by none any more (it was killed). The
    session of another service's zygotes, which may share the pool's slots, is led by that
    service's own process (root's or the app user's) as long as it runs. (0: a session made
    outside this PID namespace, as a container's may be; never a run's.)
    """
    if session in (ours, 0):
        return False
    try:
        return os.stat(f"/proc/{session}").st_uid == uid
    except (FileNotFoundError, ProcessLookupError):
        return True  # the leader is gone; the number is not reused while the session has a member


@functools.cache
def uid_of(user):
    return pwd.getpwnam(user).pw_uid


def _sudo_kill(command, user, what):
    """Run a kill ``command`` through sudo; True when sudo ran it (kill's 1: nothing was left)."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode not in (0, 1) or "sudo" in result.stderr:
        log.error("Could not kill %s of sandbox user %s: %s", what, user, result.stderr.strip())
        return False
    return True


def kill_processes_of(user):
    """
    SIGKILL every process ``user`` has, its zygote included (the service's stop; the last resort
    of ``end_run_processes``).

    Runs ``kill -9 -1`` as that user (sudoers allows exactly this): it reaches that user's
    processes only, whatever their process group. Returns True when sudo and kill succeeded;
    kill fails (status 1) when there was nothing to kill, which is fine too.
    """
    return _sudo_kill(commands.kill_own(user), user, "the processes")


def kill_groups(user, groups):
    """
    SIGKILL the process groups ``groups`` as ``user`` (``kill -9 -- -<pgid> ...``): each group in
    one pass of the kernel (kill(-pgid) is atomic, as kill(-1) is: a fork chain within the group
    cannot outrun it), and only ``user``'s processes in it.
    """
    return _sudo_kill(commands.kill_groups(user, sorted(groups)), user, f"the process groups {sorted(groups)}")


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


def end_run_processes(user, timeout=None):
    """
    SIGKILL every process of ``user``'s runs (``run_groups_of``), never its zygote, until none is
    left. Each group dies in one pass; a run can make no new group (seccomp), so this ends within
    a pass or two. Where something can (our layer off, e.g. AppArmor-only hosts: a chain of
    ``setsid`` and ``fork``) and processes not yet killed still appear in the runs' groups after
    ``timeout`` seconds (``KILL_GROUPS_SECONDS``), or sudo refuses the group kill, every process of
    the user is killed at once, zygote included: the slot's next run is then served by a fresh
    interpreter while a new zygote preloads (zygote_client.py). A process already killed that is
    still exiting (releasing a large address space takes a while: over 1.5 s under emulation) is
    waited for, up to ``EXIT_WAIT_SECONDS``: killing every process would not end it sooner. True
    when nothing of the runs is left.
    """
    uid = uid_of(user)
    started = time.monotonic()
    deadline = started + (KILL_GROUPS_SECONDS if timeout is None else timeout)
    killed = set()  # (group, pid): a process that moves to another group is new there
    while groups := run_groups_of(uid):
        now = time.monotonic()
        seen = {(group, pid) for group, pids in groups.items() for pid in pids}
        if seen - killed:
            if now > deadline or not kill_groups(user, groups):
                log.error("Processes of sandbox user %s outlive the kills of their process groups (%s): killing "
                          "every process of the user, its zygote too", user, groups)
                return kill_all_processes_of(user)
            killed |= seen
        elif now > started + EXIT_WAIT_SECONDS:
            log.error("Processes of sandbox user %s are still exiting %.1f s after they were killed: %s",
                      user, now - started, groups)
            return False
        time.sleep(0.01)  # SIGKILL is delivered when the process next runs
    return True


def end_leftovers(user):
    """
    After a run's answer, before its slot is released: nothing of the slot's ``user`` may be left
    running but its zygotes (a zygote and a successor that may be preloading). The run's reaper
    (a warm run's zygote, which the app has waited for: ``WarmRun.finish``) ends every process
    of the run, so this finds nothing, unless the reaper itself was beaten: then, after
    ``LEFTOVER_GRACE_SECONDS``, the run's process groups are killed (``end_run_processes``); the
    zygote keeps serving the slot.
    """
    uid = uid_of(user)
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while left := run_groups_of(uid):
        if time.monotonic() > deadline:
            log.warning("Sandbox user %s has processes %s left after its run: killing their process groups",
                        user, left)
            end_run_processes(user)
            return
        time.sleep(0.01)  # the reaper and the run's leader are exiting


class Watch:
    """
    A started run's time limit: codejail's killer thread (``sudo pkill -9 -g``) and, for a run
    in a pool slot, the backstop that kills the process groups of the slot's runs a little later.
    """

    def __init__(self, process, realtime, backstop_user=None):
        self._backstop = None
        if not realtime:
            return
        ProcessKillerThread(process, limit=realtime).start()
        if backstop_user is not None:
            # Should the run's reaper be beaten (it ends what the time limit's `pkill -g` misses),
            # the slot's runs' process groups are killed shortly after: the answer still comes.
            self._backstop = threading.Timer(realtime + BACKSTOP_SECONDS, end_run_processes,
                                             (backstop_user,))
            self._backstop.daemon = True
            self._backstop.start()

    def stop(self):
        """
        The run is over. A backstop that fired has ended its kill loop when this returns: else it
        could kill the next run's processes in this slot.
        """
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop.join()
