"""
The warm sandbox's client, the web app's side (docs/decisions/0007-warm-sandbox.rst): a warm run
(run.py) is forked by its slot's zygote (codejail_service/confinement/zygote.py) instead of
started as a fresh ``sudo -u <user> python -E -B jailed_code``.

codejail still builds the run: its run directory, ``jailed_code``, stdin, rlimits and time
limit; ``runner.run_program`` hands those to ``run`` here, which returns an object shaped like
the ``Popen`` it would otherwise have made, so the output cap and codejail's
``ProcessKillerThread`` (``sudo pkill -9 -g <pgid>``) work on it unchanged.

One zygote per slot, shared by every worker: it listens on ``<slot dir>/<user>.sock`` (the app's
private directory). Whichever worker holds the slot and finds no zygote there starts one. A
slot's recovery (``pool._recover``) kills it with the rest of the user's processes; the next run
starts a new one.

Recycling (``CODEJAIL_ZYGOTE_MAX_RUNS``, ``CODEJAIL_ZYGOTE_MAX_SECONDS``): a zygote that has
served its share says so with a run's pid. The worker that hears it starts the successor in a
background thread, off every request's path (``replace``): the successor listens on
``<user>.sock.next`` and preloads while its predecessor keeps serving; once it says ``ready``,
its socket is renamed over ``<user>.sock`` (new connections reach it) and the predecessor is told
to retire (it serves what was already queued, then exits). One replacement per slot at a time,
service-wide (an flock on ``<user>.successor.lock``).
"""

import fcntl
import json
import logging
import os
import select
import socket
import subprocess
import threading
import time

from codejail_service.sandbox import commands, config, pool, processes

log = logging.getLogger(__name__)

# How long a run may wait for its zygote to fork it: a new zygote preloads first (PRELOAD in
# confinement/zygote.py, ~2.5 s of CPU; several at once when the service starts, on a busy host).
FORK_TIMEOUT_SECONDS = 30
# How long a successor may take to preload before the replacement is given up (and retried at
# a later run: its predecessor keeps asking).
SUCCESSOR_TIMEOUT_SECONDS = 120
MAX_MESSAGE = 4096
# Users whose zygote's successor a thread of this process is starting.
_replacing = set()
_replacing_lock = threading.Lock()


class ZygoteError(Exception):
    """The zygote could not be started or did not fork the run."""


class ZygoteGone(ZygoteError):
    """The zygote closed the connection."""


def socket_path(user):
    return os.path.join(pool.slot_dir(), f"{user}.sock")


def start_zygote(user, path=None, stdout=subprocess.DEVNULL):
    """
    Start ``user``'s zygote, listening on a fresh socket at ``path`` (``socket_path(user)``).

    The zygote forks at once and its first process exits (waited for here): the zygote is then
    gunicorn's master's child (a child subreaper, lifecycle.py), which reaps it as soon as it
    ends, and never a zombie of this worker, counted against its sandbox user (RLIMIT_NPROC, and
    ``processes.end_leftovers``) until this worker waits for it.
    """
    path = path or socket_path(user)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        listener.bind(path)
        listener.listen(8)
        # sudo closes every descriptor but 0-2: the listening socket goes in as stdin.
        conf = config.current()
        process = subprocess.Popen(
            commands.zygote(user, conf.zygote_python or conf.python_bin, conf.zygote_script),
            stdin=listener, stdout=stdout,
        )
    try:
        process.wait(FORK_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("The zygote of %s did not leave its first process within %s s", user, FORK_TIMEOUT_SECONDS)
    log.info("Started the warm sandbox zygote of %s", user)
    return process


def start_all():
    """
    Start the zygote of every free slot that has none, all at once: they preload in parallel
    (the startup checks, which come next, would otherwise start them one after another).

    Run by lifecycle.start_zygotes once this process adopts orphans (each zygote leaves its first
    process at once, ``start_zygote``).
    """
    for slot in pool.free_slots():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(socket_path(slot.user))  # one there already (another service's): keep it
        except (FileNotFoundError, ConnectionRefusedError):
            start_zygote(slot.user)
        finally:
            probe.close()


def replace(user):
    """
    Start ``user``'s zygote's successor in a background thread (a no-op if this process is at it
    already); see the module's docstring.
    """
    with _replacing_lock:
        if user in _replacing:
            return
        _replacing.add(user)
    threading.Thread(target=_replace, args=(user,), name=f"zygote-successor-{user}", daemon=True).start()


def _replace(user):
    try:
        lock_path = os.path.join(pool.slot_dir(), f"{user}.successor.lock")
        with open(lock_path, "a", encoding="ascii") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another worker is starting it
            _hand_over(user)
    except Exception:  # a thread of our own: say it; the old zygote serves on
        log.exception("Could not replace the warm sandbox zygote of %s", user)
    finally:
        with _replacing_lock:
            _replacing.discard(user)


def _hand_over(user):
    path = socket_path(user)
    next_path = f"{path}.next"
    started = time.monotonic()
    process = start_zygote(user, next_path, stdout=subprocess.PIPE)
    with process.stdout:
        ready = select.select([process.stdout], [], [], SUCCESSOR_TIMEOUT_SECONDS)[0]
        if not ready or process.stdout.readline() != b"ready\n":
            os.unlink(next_path)  # it exits idle, unreachable; the old zygote serves on
            raise ZygoteError(f"the successor of {user}'s zygote was not ready in {SUCCESSOR_TIMEOUT_SECONDS} s")
    predecessor = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        predecessor.settimeout(FORK_TIMEOUT_SECONDS)
        try:
            predecessor.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):  # gone meanwhile: nothing to retire
            predecessor.close()
            predecessor = None
        os.rename(next_path, path)  # from now on, runs connect to the successor
        if predecessor is not None:
            predecessor.send(json.dumps({"retire": True}).encode())
    finally:
        if predecessor is not None:
            predecessor.close()
    log.info("Replaced the warm sandbox zygote of %s: its successor was ready in %.2f s",
             user, time.monotonic() - started)


def _connect(user, starts=2):
    """
    A connection to ``user``'s zygote, starting one if none listens (at most ``starts`` times: a
    zygote just started was seen refusing once under the hostile soak, cause not found yet).
    """
    for attempt in range(starts):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(socket_path(user))
            return conn
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            if attempt:
                log.warning("The new warm sandbox zygote of %s refused the connection: starting another", user)
            start_zygote(user)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(socket_path(user))
    except BaseException:
        conn.close()
        raise
    return conn


def run(user, cwd, rlimits):
    """Have ``user``'s zygote (its slot's) fork the run in ``cwd``; a ``WarmRun`` with its pipes."""
    try:
        return _run(user, cwd, rlimits)
    except ZygoteGone:
        # It exited (idle, retired, past its lifetime) as we connected, or was killed with its
        # slot's processes: once more, with its successor, or a new one if there is none.
        # Nothing of the run had started.
        return _run(user, cwd, rlimits)


def _run(user, cwd, rlimits):
    conn = _connect(user)
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    child_ends, our_ends = [stdin_read, stdout_write, stderr_write], [stdin_write, stdout_read, stderr_read]
    try:
        conf = config.current()
        request = {"cwd": cwd, "rlimits": [[name, *limits] for name, limits in rlimits],
                   "max_runs": conf.zygote_max_runs, "max_seconds": conf.zygote_max_seconds}
        try:
            socket.send_fds(conn, [json.dumps(request).encode()], child_ends)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ZygoteGone("the zygote closed the connection") from exc
    except BaseException:
        for fd in our_ends:
            os.close(fd)
        conn.close()
        raise
    finally:
        for fd in child_ends:
            os.close(fd)
    warm = WarmRun(conn, *our_ends, uid=_uid_of(user))
    try:
        reply = warm.receive(FORK_TIMEOUT_SECONDS)
        if reply is None or "pid" not in reply:
            raise ZygoteError(f"the zygote of {user} did not fork the run: {reply!r}")
    except BaseException:
        warm.close()
        raise
    warm.pid = reply["pid"]
    warm.zygote_pid = reply.get("zygote")
    if reply.get("retire"):
        replace(user)
    return warm


def _uid_of(user):
    try:
        return processes.uid_of(user)
    except KeyError:  # no such user (the unit tests' stand-ins)
        return None


class WarmRun:
    """A run forked by a zygote, with what ``run_subprocess`` uses of a ``Popen``."""

    def __init__(self, conn, stdin_fd, stdout_fd, stderr_fd, uid=None):
        self.pid = None
        self._uid = uid
        self.zygote_pid = None  # left running after the run: it forks the slot's next one
        self.returncode = None
        self.stdin = os.fdopen(stdin_fd, "wb", buffering=0)
        self.stdout = os.fdopen(stdout_fd, "rb", buffering=0)
        self.stderr = os.fdopen(stderr_fd, "rb", buffering=0)
        self._conn = conn
        self._lock = threading.Lock()  # poll() runs in codejail's killer thread too

    @property
    def zygote_pids(self):
        """
        Every zygote of this run's slot now: the one that forked it, and a successor that may be
        preloading (``replace``), which another worker may have started. A zygote has the zygote's
        command line and stays in the service's session (the app starts it without a session of
        its own); every run takes a session of its own, and its processes keep it.
        """
        pids = {self.zygote_pid} if self.zygote_pid else set()
        if self._uid is not None:
            ours = os.getsid(0)
            for pid in processes.processes_of(self._uid):
                if processes.command_line_ends_with(pid, b"/zygote.py") and processes.session_of(pid) == ours:
                    pids.add(pid)
        return pids

    def receive(self, timeout):
        """
        The zygote's next message (a dict), or None if none came within ``timeout`` seconds.

        Either thread may read the status (the run's or codejail's killer): whichever does sets
        ``returncode`` for both.
        """
        select.select([self._conn], [], [], timeout)
        with self._lock:
            if self.returncode is not None:
                return None
            try:
                message = self._conn.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except ConnectionResetError:  # queued on a zygote that exited before taking it
                message = b""
            if not message:
                raise ZygoteGone("the zygote closed the connection (killed with its slot's processes?)")
            reply = json.loads(message)
            if "status" in reply:
                self.returncode = reply["status"]
            return reply

    def poll(self):
        """The run's status, as ``subprocess`` reports it, or None while it runs."""
        if self.returncode is None:
            self.receive(0)
        return self.returncode

    def wait(self):
        """Wait for the run to end (codejail's time limit ends it); its status."""
        while self.returncode is None:
            self.receive(0.1)
        self.close()
        return self.returncode

    def close(self):
        for pipe in (self.stdin, self.stdout, self.stderr):
            if not pipe.closed:
                pipe.close()
        self._conn.close()
