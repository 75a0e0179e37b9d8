"""
The warm sandbox's client, the web app's side (docs/decisions/0007-warm-sandbox.rst): a warm run
(run.py) is forked by its slot's zygote (codejail_service/confinement/zygote.py) instead of
started as a fresh ``sudo -u <user> python -E -B jailed_code``.

codejail still builds the run: its run directory, ``jailed_code``, stdin, rlimits and time
limit; ``runner.run_program`` hands those to ``run`` here, which returns an object shaped like
the ``Popen`` it would otherwise have made, so the output cap and codejail's
``ProcessKillerThread`` (``sudo pkill -9 -g <pgid>``) work on it unchanged.

One zygote per slot, shared by every worker: it listens on ``<slot dir>/<user>.sock`` (the app's
private directory), which only ever names a zygote that has preloaded. It is two processes, a
light one that listens and a full one behind it (confinement/zygote.py, ``LIGHT_PRELOAD``); each
request says which should fork its run (``light_enough``, from the run's code). Nothing the app does to
end a run's processes reaches it (processes.py). A run that finds no zygote ready there (none
yet, or it died: crashed, idle past ``IDLE_SECONDS``, or killed by the last resort of
processes.end_run_processes) never waits for one: it runs at once as a fresh interpreter,
confined the same way (``ZygoteNotReady``; runner.py), while a new zygote preloads in the
background (``replace``) and takes the socket once ready. Only the service's start waits for its
zygotes (``start_all``), off every request's path.

Recycling (``CODEJAIL_ZYGOTE_MAX_RUNS``, ``CODEJAIL_ZYGOTE_MAX_SECONDS``): a zygote that has
served its share says so with a run's pid. The worker that hears it starts the successor in a
background thread, off every request's path (``replace``, as for a slot without a zygote): the
successor listens on ``<user>.sock.next`` and preloads while its predecessor keeps serving; once
it says ``ready``, its socket is renamed over ``<user>.sock`` (new connections reach it) and the
predecessor is told to retire (it serves what was already queued, then exits). One replacement per slot at a time,
service-wide (an flock on ``<user>.successor.lock``), and none within
``RETRY_AFTER_FAILURE_SECONDS`` of one that failed (the lock file holds the failure's time) but at
the service's start.
"""

import fcntl
import json
import logging
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time

from codejail_service.sandbox import commands, config, pool

log = logging.getLogger(__name__)

# How long a run may wait for its zygote to fork it. Only a zygote that has preloaded is ever
# reached (``socket_path``), so it forks at once; this bounds a stuck one.
FORK_TIMEOUT_SECONDS = 30
# How long a new zygote may take to preload (PRELOAD in confinement/zygote.py, ~2.5 s of CPU;
# several at once when the service starts, on a busy host) before it is given up (and another
# started by a later run: its predecessor keeps asking, or the slot still has none).
SUCCESSOR_TIMEOUT_SECONDS = 120
# After a new zygote failed to start or preload, how long no other is started for its slot, by
# any worker (the time of the failure is kept in the slot's successor lock file): a slot whose
# zygotes keep failing (a broken sandbox venv, sudoers) serves fresh interpreters meanwhile,
# instead of starting a preload (~2.5 s of CPU) for each of its runs.
RETRY_AFTER_FAILURE_SECONDS = 30
# How long, after a run's answer, its zygote may take to end it (its process's exit, emptying
# its tmp/) before what is left is ended by the app (processes.end_leftovers). Its processes are
# killed when it has said its status, and an exit takes well under a second even under emulation.
FINISH_SECONDS = 5.0
MAX_MESSAGE = 4096
# Users whose zygote's successor a thread of this process is starting.
_replacing = set()
_replacing_lock = threading.Lock()
# A forked worker has none of its parent's threads: none of their users is being replaced in it.
os.register_at_fork(after_in_child=_replacing.clear)


# What a run forked by the light zygote may import and find loaded or cheap: the standard library
# (from disk, a millisecond or so each) and what codejail's wrapper and the LMS prolog import. A
# run whose code names anything else goes to the full zygote (``light_enough``).
LIGHT_MODULES = frozenset(sys.stdlib_module_names) | {"random2", "six"}
# ``from X import ...`` (X, dots for a relative import), then, once those are taken out, ``import
# X, Y as Z`` (the names), wherever they stand, in a string too (which only ever sends a run to the
# full zygote), but not in a comment.
_FROM_IMPORT = re.compile(r"\bfrom\s+(\.*[\w.]*)\s+import\b")
_IMPORT = re.compile(r"\bimport\s+([\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*)")
# The LMS's lazy imports (capa's ``LAZY_IMPORTS``: ``numpy = LazyModule('numpy')``, ...): a name
# bound so imports its module when the code first uses it.
_LAZY = re.compile(r"^(\w+) = LazyModule\('([\w.]+)'\)$", re.MULTILINE)
_WORD = re.compile(r"\w+")
# Longer code is not read (the rules above take about 0.15 ms per KiB of the app's CPU): it goes to
# the full zygote, named modules unknown. The LMS's prolog and lazy imports alone are 3 KiB.
LIGHT_MAX_CODE_CHARS = 64 * 1024
# A string literal (kept: what it says counts) or a comment (dropped: the LMS prolog's own comments
# name numpy and matplotlib).
_STRING_OR_COMMENT = re.compile(r"""("{3}[\s\S]*?"{3}|'{3}[\s\S]*?'{3}"""  # triple-quoted
                                r"""|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')"""  # quoted
                                r"""|#[^\n]*""")  # a comment


def light_enough(code, python_path=None):
    """
    True when ``code`` can run in the light zygote (LIGHT_PRELOAD in confinement/zygote.py):
    it imports nothing but ``LIGHT_MODULES``, and uses none of the LMS's lazily imported names
    whose module is not one of them; and no course modules come with it (``python_path``), and it
    is not past ``LIGHT_MAX_CODE_CHARS``.

    Only what the code's text says is read, never run: an import the text hides (``__import__``
    of a computed name) loads from disk in the light zygote, as in a fresh interpreter, and costs
    what it would there. Anything else that looks like an import sends the run to the full zygote.
    """
    return needs(code, python_path)[0]


def needs(code, python_path=None):
    """
    ``(light_enough, uses)``: ``uses`` is the top-level modules beyond ``LIGHT_MODULES`` that
    ``code``'s text imports or uses through the LMS's lazy names (sorted; none when it is not
    read), for which the full zygote's next spare copies ahead (confinement/zygote.py, ``Spare``).
    """
    if len(code) > LIGHT_MAX_CODE_CHARS:
        return False, []
    code = _STRING_OR_COMMENT.sub(lambda match: match.group(1) or "", code)
    lazy = _LAZY.findall(code)
    code = _LAZY.sub("", code)
    words = set(_WORD.findall(code)) if lazy else set()
    modules = {_top(module) for name, module in lazy if name in words}
    named = _FROM_IMPORT.findall(code)
    for names in _IMPORT.findall(_FROM_IMPORT.sub(" ", code)):
        named += [name.split()[0] for name in names.split(",")]
    modules.update(_top(module) for module in named)
    uses = sorted(modules - LIGHT_MODULES)
    return not python_path and not uses, uses


def _top(module):
    return module.split(".")[0]


class ZygoteError(Exception):
    """The zygote could not be started or did not fork the run."""


class ZygoteGone(ZygoteError):
    """The zygote closed the connection."""


class ZygoteNotReady(ZygoteError):
    """No zygote is ready in the slot: one is preloading in the background; nothing of the run started."""


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
    Start the zygote of every free slot that has none, all at once, and wait until each has
    preloaded (in parallel) or failed: the startup checks, which come next, prove the warm
    sandbox with them.

    Run by lifecycle.start_zygotes once this process adopts orphans (each zygote leaves its first
    process at once, ``start_zygote``).
    """
    starting = []
    for slot in pool.free_slots():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(socket_path(slot.user))  # one there already (another service's): keep it
        except (FileNotFoundError, ConnectionRefusedError):
            starting.append(replace(slot.user, retry=True))
        finally:
            probe.close()
    for thread in filter(None, starting):
        thread.join(SUCCESSOR_TIMEOUT_SECONDS + FORK_TIMEOUT_SECONDS)


def replace(user, retry=False):
    """
    Start a new zygote for ``user``'s slot in a background thread, which puts it in the place of
    the slot's zygote (if there is one) once it has preloaded; see the module's docstring. The
    thread, or None if this process is at it already. Unless ``retry`` (the service's start), none
    is started within ``RETRY_AFTER_FAILURE_SECONDS`` of a failed one.
    """
    with _replacing_lock:
        if user in _replacing:
            return None
        _replacing.add(user)
    thread = threading.Thread(target=_replace, args=(user, retry), name=f"zygote-successor-{user}", daemon=True)
    thread.start()
    return thread


def _replace(user, retry=False):
    try:
        lock_path = os.path.join(pool.slot_dir(), f"{user}.successor.lock")
        with open(lock_path, "a+", encoding="ascii") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another worker is starting it
            if not retry and _failed_lately(lock):
                return
            try:
                _hand_over(user)
            except Exception:
                lock.truncate(0)
                lock.write(repr(time.time()))
                raise
            lock.truncate(0)
    except Exception:  # a thread of our own: say it; the old zygote serves on
        log.exception("Could not replace the warm sandbox zygote of %s (none is started for it for the next %d s)",
                      user, RETRY_AFTER_FAILURE_SECONDS)
    finally:
        with _replacing_lock:
            _replacing.discard(user)


def _failed_lately(lock):
    """True when the lock file (held) says a new zygote failed less than ``RETRY_AFTER_FAILURE_SECONDS`` ago."""
    lock.seek(0)
    try:
        failed = float(lock.read() or "nan")
    except ValueError:
        return False
    return abs(time.time() - failed) < RETRY_AFTER_FAILURE_SECONDS  # abs: the clock may have been set back


def _hand_over(user):
    path = socket_path(user)
    next_path = f"{path}.next"
    started = time.monotonic()
    process = start_zygote(user, next_path, stdout=subprocess.PIPE)
    with process.stdout:
        ready = select.select([process.stdout], [], [], SUCCESSOR_TIMEOUT_SECONDS)[0]
        line = process.stdout.readline() if ready else None
        if line != b"ready\n":
            # Unreachable now; the old zygote (if any) serves on. One still preloading exits once it
            # has: its ``ready`` meets this closed pipe (BrokenPipeError).
            os.unlink(next_path)
            raise ZygoteError(f"the new zygote of {user} was not ready in {SUCCESSOR_TIMEOUT_SECONDS} s" if line is None
                              else f"the new zygote of {user} exited before it was ready (it said {line!r})")
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
    log.info("%s the warm sandbox zygote of %s: ready in %.2f s", "Replaced" if predecessor else "Started",
             user, time.monotonic() - started)


def _connect(user):
    """
    A connection to ``user``'s zygote. If none listens (none yet, or it died), a new one is
    started in the background (``replace``) and ``ZygoteNotReady`` raised: the run does not
    wait for its preload.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(socket_path(user))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        conn.close()
        replace(user)
        raise ZygoteNotReady("a new zygote is preloading") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def run(user, cwd, rlimits, light=False, uses=()):
    """
    Have ``user``'s zygote (its slot's) fork the run in ``cwd``, its light one if ``light``
    (``light_enough``), of code that ``uses`` those modules (``needs``); a ``WarmRun`` with its
    pipes. ``ZygoteNotReady`` (a ``ZygoteError``) when the slot has no zygote ready: nothing of
    the run started, and one is preloading.
    """
    try:
        return _run(user, cwd, rlimits, light, uses)
    except ZygoteGone:
        # It exited (idle, retired, past its lifetime) as we connected, or died: once more, with
        # its successor if it has one in place. Nothing of the run had started.
        pass
    try:
        return _run(user, cwd, rlimits, light, uses)
    except ZygoteGone:
        replace(user)  # it takes connections and drops them: a new one takes its place
        raise


def _run(user, cwd, rlimits, light=False, uses=()):
    conn = _connect(user)
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    child_ends, our_ends = [stdin_read, stdout_write, stderr_write], [stdin_write, stdout_read, stderr_read]
    try:
        conf = config.current()
        request = {"cwd": cwd, "rlimits": [[name, *limits] for name, limits in rlimits],
                   "max_runs": conf.zygote_max_runs, "max_seconds": conf.zygote_max_seconds, "light": light,
                   "uses": list(uses)}
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
    warm = WarmRun(conn, *our_ends)
    try:
        reply = warm.receive(FORK_TIMEOUT_SECONDS)
        if reply is None or "pid" not in reply:
            raise ZygoteError(f"the zygote of {user} did not fork the run: {reply!r}")
    except BaseException:
        warm.close()
        raise
    warm.pid = reply["pid"]
    if reply.get("retire"):
        replace(user)
    return warm


class WarmRun:
    """
    A run forked by a zygote, with what ``run_subprocess`` uses of a ``Popen``. Its zygote tells
    its status as soon as the run has said it (its output closed, its process exiting), then,
    with ``"ended"``, what it used once it is reaped and its tmp/ is empty: ``wait`` returns at
    the first, ``finish`` (after the answer) at the second.
    """

    def __init__(self, conn, stdin_fd, stdout_fd, stderr_fd):
        self.pid = None
        self.returncode = None
        self.ended = False
        self.counts = {}  # what the run's processes used, as its zygote counted it
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
            if self.ended:
                return None
            try:
                message = self._conn.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except ConnectionResetError:  # queued on a zygote that exited before taking it
                message = b""
            if not message:
                raise ZygoteGone("the zygote closed the connection (it died?)")
            reply = json.loads(message)
            if "status" in reply and self.returncode is None:
                self.returncode = reply["status"]
            if reply.get("ended"):
                self.ended = True
                self.counts = reply.get("counts", {})
            return reply

    def poll(self):
        """The run's status, as ``subprocess`` reports it, or None while it runs."""
        if self.returncode is None:
            self.receive(0)
        return self.returncode

    def wait(self):
        """Wait for the run's status (codejail's time limit ends the run); its status."""
        while self.returncode is None:
            self.receive(0.1)
        return self.returncode

    def finish(self, timeout=FINISH_SECONDS):
        """
        After its answer: wait, up to ``timeout`` seconds, until the zygote has ended the run
        (reaped, its tmp/ emptied), then close what is left of it. True if it said so; else
        (it died, or is slower) ``processes.end_leftovers`` ends what is left.
        """
        deadline = time.monotonic() + timeout
        try:
            while not self.ended and (left := deadline - time.monotonic()) > 0:
                self.receive(left)
        except ZygoteGone:
            log.warning("The zygote of run %s has gone before it ended the run", self.pid)
        finally:
            self.close()
        return self.ended

    def close(self):
        for pipe in (self.stdin, self.stdout, self.stderr):
            if not pipe.closed:
                pipe.close()
        self._conn.close()
