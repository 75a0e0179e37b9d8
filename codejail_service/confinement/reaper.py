"""
Make every process of a run end with the run, and leave its tmp/ empty.

The sandbox python forks once: the child runs the submitted code, the parent
stays behind as a tiny reaper. When the child exits, the reaper SIGKILLs every
process left in its Landlock domain (kill(-1) reaches only processes the domain
may signal: this run's, never another run's), reaps them (it is their
subreaper), and exits with the child's status. So codejail's pipes close, and
the sandbox UID's RLIMIT_NPROC budget is free again, before the response goes.
"""
import os
import signal
import time

_MAX_SWEEPS = 1000
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def kill_the_rest():
    """
    SIGKILL every process this domain may signal, and reap them all.

    Every process of the run descends from us (we are its subreaper, and
    nothing can re-parent elsewhere), so once we have no child left, nothing
    of the run is left. kill(-1) cannot tell us that: it reports success
    whenever any process exists, signalled or not.
    """
    for _ in range(_MAX_SWEEPS):
        os.kill(-1, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.001)  # some are still dying: sweep again


def empty_run_tmp(path="tmp"):
    """
    Remove what the run left in its ``tmp/`` (all of it the sandbox user's own), first
    giving back u+rwx to directories the run locked: codejail's clean-up (``rm -rf``) cannot
    enter a directory made unreadable, and the run directory would then stay behind. Best
    effort and iterative (no recursion limit); codejail's own clean-up still follows.
    """
    pending, found = [path], []
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = list(scan)
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    os.chmod(entry.path, 0o700)
                    pending.append(entry.path)
                    found.append(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass
    for directory in reversed(found):  # children before their parents
        try:
            os.rmdir(directory)
        except OSError:
            pass


def supervise(child):
    """Run by the reaper: wait for ``child``, clean up, exit as it did. Never returns."""
    status = None
    try:
        # sudo relays these to us: pass them on to the code's process.
        for sig in _FORWARDED:
            signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
        while status is None:
            pid, wait_status = os.waitpid(-1, 0)
            if pid == child:
                status = wait_status
        kill_the_rest()
        empty_run_tmp()
    finally:
        _exit_like(status)


def _exit_like(status):
    """Exit with the child's exit code, or die of the signal that killed it."""
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else 1)
