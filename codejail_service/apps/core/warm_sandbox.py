"""
The warm sandbox, the web app's side (docs/decisions/0007-warm-sandbox.rst): with
``CODEJAIL_WARM_SANDBOX`` on, a run is forked by its slot's zygote (codejail_service/confinement/
zygote.py) instead of started as a fresh ``sudo -u <user> python -E -B jailed_code``.

codejail still builds the run: its run directory, ``jailed_code``, stdin, rlimits and time
limit; ``sandbox_runner.run_subprocess`` hands those to ``run`` here, which returns an object
shaped like the ``Popen`` it would otherwise have made, so the output cap and codejail's
``ProcessKillerThread`` (``sudo pkill -9 -g <pgid>``) work on it unchanged.

One zygote per slot, shared by every worker: it listens on ``<slot dir>/<user>.sock`` (the app's
private directory). Whichever worker holds the slot and finds no zygote there starts one. A
slot's recovery (``sandbox_pool._recover``) kills it with the rest of the user's processes; the
next run starts a new one.
"""

import json
import logging
import os
import select
import socket
import subprocess
import threading

from django.conf import settings

from codejail_service.apps.core import sandbox_pool

log = logging.getLogger(__name__)

# How long a run may wait for its zygote to fork it (a new zygote imports numpy first).
FORK_TIMEOUT_SECONDS = 10
MAX_MESSAGE = 4096
# Zygotes this process started: it must reap them when they exit.
_started = {}


class ZygoteError(Exception):
    """The zygote could not be started or did not fork the run."""


class ZygoteGone(ZygoteError):
    """The zygote closed the connection."""


def enabled():
    """True when runs go through the slots' zygotes."""
    return bool(settings.CODEJAIL_WARM_SANDBOX) and bool(settings.CODEJAIL_SANDBOX_POOL_SIZE)


def is_sandbox_run(cmd):
    """True for codejail's run of the sandbox python (not its cleanup or anything else)."""
    return cmd[-4:] == [settings.CODE_JAIL["python_bin"], "-E", "-B", "jailed_code"]


def socket_path(user):
    return os.path.join(sandbox_pool.slot_dir(), f"{user}.sock")


def start_zygote(user):
    """Start ``user``'s zygote, listening on a fresh socket at ``socket_path(user)``."""
    _reap()
    path = socket_path(user)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        listener.bind(path)
        listener.listen(8)
        # sudo closes every descriptor but 0-2: the listening socket goes in as stdin.
        process = subprocess.Popen(  # noqa: S603 -- a pinned sudoers rule
            ["sudo", "-n", "-u", user, settings.CODE_JAIL["python_bin"], "-E", "-B", "-S",
             settings.CODEJAIL_ZYGOTE_SCRIPT],
            stdin=listener, stdout=subprocess.DEVNULL,
        )
    _started[process.pid] = process
    log.info("Started the warm sandbox zygote of %s (PID %s)", user, process.pid)


def _reap():
    for pid, process in list(_started.items()):
        if process.poll() is not None:
            del _started[pid]


def _connect(user):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(socket_path(user))
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        start_zygote(user)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(socket_path(user))
    return conn


def run(slot, cwd, rlimits):
    """Have ``slot``'s zygote fork the run in ``cwd``; a ``WarmRun`` with its pipes."""
    try:
        return _run(slot, cwd, rlimits)
    except ZygoteGone:
        # It exited (idle) as we connected, or was killed with its slot's processes: once more,
        # with a new one. Nothing of the run had started.
        start_zygote(slot.user)
        return _run(slot, cwd, rlimits)


def _run(slot, cwd, rlimits):
    conn = _connect(slot.user)
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    child_ends, our_ends = [stdin_read, stdout_write, stderr_write], [stdin_write, stdout_read, stderr_read]
    try:
        request = {"cwd": cwd, "rlimits": [[name, *limits] for name, limits in rlimits]}
        socket.send_fds(conn, [json.dumps(request).encode()], child_ends)
    except BaseException:
        for fd in our_ends:
            os.close(fd)
        conn.close()
        raise
    finally:
        for fd in child_ends:
            os.close(fd)
    warm = WarmRun(conn, *our_ends)
    try:
        reply = warm.receive(FORK_TIMEOUT_SECONDS)
        if reply is None or "pid" not in reply:
            raise ZygoteError(f"the zygote of {slot.user} did not fork the run: {reply!r}")
    except BaseException:
        warm.close()
        raise
    warm.pid = reply["pid"]
    warm.zygote_pid = reply.get("zygote")
    return warm


class WarmRun:
    """A run forked by a zygote, with what ``run_subprocess`` uses of a ``Popen``."""

    def __init__(self, conn, stdin_fd, stdout_fd, stderr_fd):
        self.pid = None
        self.zygote_pid = None  # left running after the run: it forks the slot's next one
        self.returncode = None
        self.stdin = os.fdopen(stdin_fd, "wb", buffering=0)
        self.stdout = os.fdopen(stdout_fd, "rb", buffering=0)
        self.stderr = os.fdopen(stderr_fd, "rb", buffering=0)
        self._conn = conn
        self._lock = threading.Lock()  # poll() runs in codejail's killer thread too

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
