"""
How codejail's subprocesses run in this service: codejail's ``run_subprocess``, with captured
output capped and no cleanup process when there is nothing to clean.

``codejail.safe_exec`` stays the one path to execution. Behind it, ``codejail.jail_code`` calls
``run_subprocess`` twice per run: for the sandbox python, then for the cleanup of the run's
``tmp/`` (``sudo -u <sandbox> find <run>/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} ;``).
``install()`` (from ``CoreConfig.ready``) points ``codejail.jail_code.run_subprocess`` at
``run_subprocess`` below, which differs from codejail's in two ways (see
docs/decisions/0005-run-cost-and-overload.rst):

- **Output cap.** codejail reads stdout and stderr whole into the worker's memory: a run that
  floods them grows the worker by hundreds of MB. Here at most ``CODEJAIL_MAX_OUTPUT_BYTES`` are
  read, both streams together; past that the pipes are closed (the run's next write fails, so
  it ends, or codejail's time limit ends it), a note is added to stderr, and the run counts as
  failed, so the LMS sees the note in ``emsg``.
- **Cleanup.** Most runs leave ``tmp/`` empty, and the sudo + find pair costs about 6 ms of CPU
  (plus one ``rm`` process per entry). The app user owns ``tmp/`` (codejail makes it 0777,
  without the sticky bit), so it may unlink any entry there itself; only directories the sandbox
  made (whose contents the app may not remove) still need codejail's cleanup as the sandbox user.
"""

import contextlib
import functools
import logging
import os
import select
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import threading

from codejail import jail_code
from codejail.subproc import ProcessKillerThread, set_process_limits
from django.conf import settings

from codejail_service.apps.core import sandbox_pool, warm_sandbox

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
# Seconds past REALTIME after which the slot's every process is killed, if the run still holds
# its pipes open then (a beaten reaper): well within the LMS's 3.5 s - REALTIME margin's reach.
BACKSTOP_SECONDS = 0.5


def install():
    """Make codejail run its subprocesses through ``run_subprocess``, in ``temp_directory`` (idempotent)."""
    jail_code.run_subprocess = run_subprocess
    jail_code.temp_directory = temp_directory


@contextlib.contextmanager
def temp_directory():
    """
    codejail's ``temp_directory``, in this run's slot directory (``sandbox_pool.run_dir_parent``):
    with ``CODEJAIL_RUN_DIR_ROOT``, a size-limited filesystem of its own caps what a run writes.
    The slot notes the directory from the moment it exists.
    """
    slot = sandbox_pool.held_slot()
    path = tempfile.mkdtemp(prefix=sandbox_pool.RUN_DIR_PREFIX, dir=sandbox_pool.run_dir_parent(slot))
    if slot is not None:
        slot.record_run_dir(path)  # for whoever recovers the slot, should this process die
    try:
        yield path
    finally:
        shutil.rmtree(path)


def run_subprocess(cmd, stdin=None, cwd=None, env=None, rlimits=None, realtime=None, slug=None):
    """
    codejail's ``run_subprocess`` (same arguments, same result: ``(status, stdout, stderr)``),
    with the output cap and the cleanup shortcut described in this module's docstring.
    """
    tmp_dir = _cleanup_target(cmd, cwd)
    if tmp_dir is not None and _clean_as_app(tmp_dir):
        return 0, b"", b""
    cmd = sandbox_pool.sandbox_command(cmd)  # as the sandbox user of this run's slot
    slot = sandbox_pool.held_slot()
    if slot is not None and warm_sandbox.enabled() and warm_sandbox.is_sandbox_run(cmd):
        # Forked by the slot's zygote, which applies the same rlimits, session and confinement.
        process = warm_sandbox.run(slot, cwd, rlimits or ())
    else:
        # As codejail does: a new session (so its timeout can kill the whole group) and the rlimits.
        process = subprocess.Popen(  # noqa: S603 -- codejail's own command line
            cmd, cwd=cwd, env=env,
            preexec_fn=functools.partial(set_process_limits, rlimits or ()),  # noqa: PLW1509
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    if slug:
        log.info("Executed jailed code %s in %s, with PID %s", slug, cwd, process.pid)
    pooled = slot is not None and slot.index is not None and cmd[:2] == ["sudo", "-u"]
    backstop = None
    if realtime:
        ProcessKillerThread(process, limit=realtime).start()
        if pooled:
            # Should the run's reaper be beaten (it ends what the time limit's `pkill -g` misses),
            # every process of the slot's user is killed shortly after: the answer still comes.
            backstop = threading.Timer(realtime + BACKSTOP_SECONDS, sandbox_pool.kill_all_processes_of,
                                       (slot.user,))
            backstop.daemon = True
            backstop.start()

    limit = settings.CODEJAIL_MAX_OUTPUT_BYTES
    try:
        stdout, stderr, truncated = _communicate_capped(process, stdin, limit)
        status = process.wait()
    finally:
        if backstop is not None:
            backstop.cancel()
    if pooled:
        # No process of the run outlives its answer (recovering the slot if one tried).
        sandbox_pool.end_leftovers(slot, killed=status == -signal.SIGKILL, keep=getattr(process, "zygote_pid", None))
    if truncated:
        log.warning("Output of %r exceeded %d bytes: truncated (status %s)", slug, limit, status)
        stderr += (f"\n[codejail-service: output truncated: the run wrote more than {limit} bytes to "
                   "stdout and stderr; the rest was not read]").encode()
        # Its globals (on stdout) cannot be read whole: never a success.
        status = status or 1
    return status, stdout, stderr


def _communicate_capped(process, stdin, limit):
    """
    Feed ``stdin`` and read stdout and stderr until both close or ``limit`` bytes were read.

    Returns ``(stdout, stderr, truncated)``; on truncation every pipe to the process is closed.
    """
    out = {process.stdout: [], process.stderr: []}
    total = 0
    truncated = False
    pending = memoryview(stdin or b"")
    with selectors.DefaultSelector() as selector:
        if pending:
            selector.register(process.stdin, selectors.EVENT_WRITE)
        else:
            process.stdin.close()
        selector.register(process.stdout, selectors.EVENT_READ)
        selector.register(process.stderr, selectors.EVENT_READ)
        while selector.get_map() and not truncated:
            for key, _ in selector.select():
                pipe = key.fileobj
                if pipe is process.stdin:
                    try:
                        # A write of at most PIPE_BUF to a writable pipe does not block.
                        pending = pending[os.write(key.fd, pending[:select.PIPE_BUF]):]
                    except BrokenPipeError:
                        pending = pending[:0]  # the run stopped reading: nothing more to give it
                    if not pending:
                        selector.unregister(pipe)
                        pipe.close()
                    continue
                data = os.read(key.fd, READ_SIZE)
                if not data:
                    selector.unregister(pipe)
                    pipe.close()
                    continue
                if total + len(data) > limit:
                    data = data[:limit - total]
                    truncated = True
                out[pipe].append(data)
                total += len(data)
                if truncated:
                    break
        if truncated:
            for key in list(selector.get_map().values()):
                selector.unregister(key.fileobj)
                key.fileobj.close()
    return b"".join(out[process.stdout]), b"".join(out[process.stderr]), truncated


def _cleanup_target(cmd, cwd):
    """The run's ``tmp/`` if ``cmd`` is codejail's cleanup of it, else None."""
    try:
        find = cmd.index("/usr/bin/find")
    except ValueError:
        return None
    if cwd is None or cmd[find + 2:] != sandbox_pool.CLEANUP_ARGS or cmd[find + 1] != os.path.join(cwd, "tmp"):
        return None
    return cmd[find + 1]


def _clean_as_app(tmp_dir):
    """
    Remove what the app user may remove from ``tmp_dir``: every entry but directories.

    True when ``tmp_dir`` is now empty, so codejail's cleanup as the sandbox user is not needed.
    """
    left = False
    try:
        fd = os.open(tmp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False  # let codejail's cleanup have its go (and fail loudly if it must)
    try:
        for name in os.listdir(fd):
            # lstat: a symlink is removed itself, never followed.
            if stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                left = True
            else:
                os.unlink(name, dir_fd=fd)
    except OSError:
        left = True
    finally:
        os.close(fd)
    return not left
