"""
How a run's processes are started and read: codejail's ``run_subprocess``, for a ``Run``, with
captured output capped and no cleanup process when there is nothing to clean.

codejail's ``jail_code`` hands its two subprocesses (the sandbox python, then the cleanup of the
run's ``tmp/``) to codejail_extension.py, which calls ``run_program`` and ``clean_tmp`` here
with the run. They differ from codejail's ``run_subprocess`` in these ways (see
docs/decisions/0005-run-cost-and-overload.rst):

- **Who runs it.** A warm run (run.py) is forked by its slot's zygote (zygote_client.py), which
  applies the same rlimits, session and confinement; a fresh one (or a warm one whose slot has no
  zygote ready, or whose zygote did not fork it) is the program command (commands.py) as the
  slot's user, at once: a run never waits for a zygote's preload.
- **Output caps.** codejail reads stdout and stderr whole into the worker's memory: a run that
  floods them grows the worker by hundreds of MB. Here each stream has a cap of its own:

  - stdout carries the globals back, so its cap scales with what they need: the run's stdin
    (codejail's JSON of the code and the input globals, encoded as the sandbox encodes them
    back) plus ``CODEJAIL_MAX_OUTPUT_BYTES`` for what the code adds. Whatever globals a request
    brought come back whole. Past the cap the pipes are closed (the run's next write fails, so
    it ends, or codejail's time limit ends it), a note is added to stderr, and the run counts as
    failed, so the LMS sees the note in ``emsg``.
  - stderr (only ever shown in ``emsg``) keeps its first and last ``CODEJAIL_MAX_OUTPUT_BYTES / 2``
    bytes, with a note of how much was left out between them, and is read to its end (the
    traceback, where the exception is, comes last) unless the run writes more than
    ``STDERR_DRAIN_FACTOR`` times the cap: then it is a flood, its pipe is closed (the worker
    would otherwise spend its CPU reading until the time limit) and a note says so. This alone
    does not fail a run.
- **Run directory in messages.** Our run directories live in the slot's capped filesystem
  (pool.run_dir_parent), but the LMS's darklaunch normaliser and operators' tooling know only
  codejail's ``/tmp/codejail-<name>``. In the output of a *failed* run (which becomes ``emsg``)
  the run directory's path is written as codejail's would be, ``/tmp/<its own name>``: the same
  random name, so still unique; the real path is in the log line of the run. A successful run's
  stdout (the globals) is never changed.
- **Cleanup.** Most runs leave ``tmp/`` empty, and the sudo + find pair costs about 6 ms of CPU
  (plus one ``rm`` process per entry). The app user owns ``tmp/`` (codejail makes it 0777,
  without the sticky bit), so it may unlink any entry there itself; only directories the sandbox
  made (whose contents the app may not remove) still need codejail's cleanup as the sandbox user.
- **No process of the run runs past its answer**, none is left once its slot is released
  (processes.py: the time limit, the backstop and ``end_leftovers``, after the answer as the
  slot is released: ``Run.release``), and none of these ends the slot's zygote.
"""

import collections
import functools
import logging
import os
import select
import selectors
import stat
import subprocess

from codejail.subproc import set_process_limits

from codejail_service.sandbox import commands, config, processes, zygote_client
from codejail_service.sandbox.run import WARM

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
# stderr is read to its end (for the traceback) up to this many times CODEJAIL_MAX_OUTPUT_BYTES.
STDERR_DRAIN_FACTOR = 64


def run_program(run, command, stdin=None, cwd=None, env=None, slug=None):
    """
    Run ``run``'s program in ``cwd`` (its run directory) with codejail's limits (``run.rlimits``,
    ``run.realtime``): ``(status, stdout, stderr)``, as codejail's ``run_subprocess`` answers.
    ``command`` starts it fresh: for a fresh run, and for a warm one whose zygote did not fork it.
    """
    rlimits = run.rlimits or ()
    process = None
    run.mark("prepare")  # codejail's own work: the run directory, its files, the limits
    if run.mode == WARM:
        # Forked by the slot's zygote, which applies the same rlimits, session and confinement.
        try:
            process = zygote_client.run(run.user, cwd, rlimits, light=run.light, uses=run.uses)
        except zygote_client.ZygoteNotReady as exc:
            # No zygote ready in the slot (gone, or its successor preloading off this path): the
            # run does not wait for one. It runs at once as a fresh interpreter, confined the same way.
            log.info("No warm sandbox of %s is ready (%s): a fresh interpreter runs the run", run.user, exc)
        except (zygote_client.ZygoteError, ConnectionRefusedError, FileNotFoundError):
            # Nothing of the run started: it runs as a fresh interpreter, confined the same way.
            log.exception("The warm sandbox of %s did not fork the run: a fresh interpreter runs it", run.user)
    if process is None:
        # As codejail does: a new session (so its timeout can kill the whole group) and the rlimits.
        process = subprocess.Popen(
            command, cwd=cwd, env=env,
            preexec_fn=functools.partial(set_process_limits, rlimits),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    if slug:
        log.info("Executed jailed code %s in %s, with PID %s", slug, cwd, process.pid)
    run.mark("start")  # the zygote's fork, or a fresh interpreter's spawn (its sudo, exec)
    watch = processes.Watch(process, run.realtime, backstop_user=run.user if run.pooled else None)

    margin = config.current().max_output_bytes
    stdout_limit = len(stdin or b"") + margin
    try:
        stdout, stderr, truncated = _communicate_capped(process, stdin, stdout_limit, margin)
        status = process.wait()
    finally:
        watch.stop()
    run.mark("run")  # the code to its answer (a warm run's: its status, said before its exit)
    run.ending = functools.partial(_end, run, process)
    if truncated:
        log.warning("stdout of %r exceeded %d bytes: truncated (status %s)", slug, stdout_limit, status)
        stderr += (f"\n[codejail-service: output truncated: the run wrote more than {stdout_limit} bytes to "
                   "stdout; the rest was not read]").encode()
        # Its globals (on stdout) cannot be read whole: never a success.
        status = status or 1
    if status != 0 and run.run_dir is not None:
        stdout, stderr = (_as_codejail_names_it(run.run_dir, stream) for stream in (stdout, stderr))
    return status, stdout, stderr


def _end(run, process):
    """
    After ``run``'s answer, before its slot is released: wait until its zygote has reaped it
    (``WarmRun.finish``; a fresh run's reaper did before its leader exited), then, in a pool
    slot, until no process of the run is left (the slot's zygote stays).
    """
    finish = getattr(process, "finish", None)
    if finish is not None:
        finish()
        run.counts.update(process.counts)
    if run.pooled:
        processes.end_leftovers(run.user)


def clean_tmp(run, tmp_dir):
    """
    Empty the run's ``tmp_dir`` after its program: what the app user may remove itself, the rest
    by codejail's cleanup as the sandbox user. ``(status, stdout, stderr)`` (codejail ignores it).
    """
    if _clean_as_app(tmp_dir):
        return 0, b"", b""
    # In the run directory, as codejail runs it: find opens its starting directory, and the
    # cleanup's AppArmor profile (codejail_cleanup) may read run directories only, not the app's "/".
    result = subprocess.run(commands.cleanup(run.user, tmp_dir), cwd=os.path.dirname(tmp_dir), capture_output=True,
                            check=False)
    return result.returncode, result.stdout, result.stderr


# Where codejail makes its run directories by default, and so the only place the LMS's darklaunch
# normaliser (``/tmp/codejail-[0-9a-zA-Z_]+``) knows them in.
CODEJAIL_RUN_DIR_PARENT = "/tmp"  # a name written in messages, never a path opened


def _as_codejail_names_it(run_dir, output):
    """``output`` with the path of ``run_dir`` (a codejail run directory) as codejail's default would be."""
    name = os.path.basename(run_dir)
    if os.path.dirname(run_dir) == CODEJAIL_RUN_DIR_PARENT:
        return output
    return output.replace(os.fsencode(run_dir), os.fsencode(os.path.join(CODEJAIL_RUN_DIR_PARENT, name)))


class _HeadAndTail:
    """A stream kept as its first and last ``limit / 2`` bytes, with a note of what was left out."""

    def __init__(self, limit):
        self.keep = limit // 2
        self.head = b""
        self.tail = collections.deque()  # chunks; whole chunks are dropped once the rest covers `keep`
        self.tail_bytes = 0
        self.total = 0

    def append(self, data):
        self.total += len(data)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail.append(data)
            self.tail_bytes += len(data)
            while self.tail_bytes - len(self.tail[0]) >= self.keep:
                self.tail_bytes -= len(self.tail.popleft())

    def value(self, closed=False):
        tail = b"".join(self.tail)[-self.keep:] if self.keep else b""
        left_out = self.total - len(self.head) - len(tail)
        value = self.head + tail
        if left_out:
            value = self.head + f"\n[codejail-service: {left_out} bytes of stderr left out]\n".encode() + tail
        if closed:
            value += f"\n[codejail-service: stderr closed after {self.total} bytes: a flood]".encode()
        return value


def _communicate_capped(process, stdin, stdout_limit, stderr_limit):
    """
    Feed ``stdin``, read stdout until it closes or ``stdout_limit`` bytes were read, and read stderr
    to its end (or ``STDERR_DRAIN_FACTOR`` times ``stderr_limit``) keeping its head and tail
    (``stderr_limit`` bytes in all).

    Returns ``(stdout, stderr, truncated)``; when stdout is truncated every pipe to the process is
    closed.
    """
    stdout = []
    stdout_read = 0
    stderr = _HeadAndTail(stderr_limit)
    stderr_closed = False
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
                if pipe is process.stderr:
                    stderr.append(data)
                    if stderr.total > STDERR_DRAIN_FACTOR * stderr_limit:
                        selector.unregister(pipe)
                        pipe.close()
                        stderr_closed = True
                    continue
                if stdout_read + len(data) > stdout_limit:
                    data = data[:stdout_limit - stdout_read]
                    truncated = True
                stdout.append(data)
                stdout_read += len(data)
                if truncated:
                    break
        if truncated:
            for key in list(selector.get_map().values()):
                selector.unregister(key.fileobj)
                key.fileobj.close()
    return b"".join(stdout), stderr.value(closed=stderr_closed), truncated


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
