"""
Make every process of a run end with the run, bound the run's total memory and CPU time, and
leave its tmp/ empty.

A fresh run (an interpreter codejail started) is three processes (``confine`` in __init__.py sets
them up):

- the *leader*: the process codejail started (a session and process group of its own: codejail's
  time limit is ``sudo pkill -9 -g <leader>``). It only waits for the reaper and exits as it did.
- the *reaper*: the leader's child, in a process group of its own, so that the time-limit kill
  does not reach it; the run's subreaper, and told by the kernel when the leader dies
  (PR_SET_PDEATHSIG). It stays behind, tiny, while the code runs.
- the *code*: the reaper's child, back in the leader's process group (so the time-limit kill
  reaches it too), which runs the submitted code in a Landlock domain nested in the reaper's (so
  it can neither signal the reaper nor read ``/proc``).

A run forked by a warm sandbox's zygote is one process: the zygote is its reaper (zygote.py,
``supervise_run``). Forking the zygote's whole preload costs about 9 ms a process, so the two
processes a fresh run needs to outlive codejail's kill are not forked there: the zygote is
outside the run's process group and its Landlock domain already.

When the code's process exits, or the leader dies (the time limit), or the run's processes hold
more memory or have used more CPU time together than its bounds (``RunWatchdog``: RLIMIT_AS and
RLIMIT_CPU bound each process alone), the reaper SIGKILLs every process left in its
Landlock domain (kill(-1) reaches only this run's processes, never the leader, another run's or a
zygote's), reaps them all (it is their subreaper), empties tmp/, and exits as the code did. So
codejail's pipes close, and the sandbox UID's RLIMIT_NPROC budget is free again, before the
response goes, whatever the code did: a fork chain that outruns ``pkill -g`` dies here. (A
zygote answers a run that said its status first, as it kills the run's group: zygote.py,
``supervise_run``; it reaps them after, before the slot's next run.)
"""
import os
import resource
import select
import signal
import time

from . import process

_MAX_SWEEPS = 1000
# Sent by the kernel to the reaper when the leader dies (codejail's time limit killed it).
LEADER_GONE = signal.SIGUSR2
# How often the watchdog sums the run's memory and CPU time: at about 1-2 GB/s of page faults
# per core, a run can overshoot the memory bound by a few tens of MB between two looks, and the
# CPU bound by this interval times the cores.
WATCH_INTERVAL_SECONDS = 0.01
PAGE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def kill_the_rest(group=None):
    """
    SIGKILL every process this domain may signal (or, given a ``group``, that process group), and
    reap them all.

    Every process of the run descends from us (we are its subreaper, and
    nothing can re-parent elsewhere), so once we have no child left, nothing
    of the run is left. kill(-1) cannot tell us that: it reports success
    whenever any process exists, signalled or not. kill(-1), as kill(-group),
    is one pass under the kernel's task list lock, so a process cannot fork
    past it. A zygote names its run's group: no process of a run can leave it
    (seccomp refuses setsid and setpgid), and a zygote that is not in a scoped
    Landlock domain of its own (a unit test's) must not kill(-1). It reaps that
    group's processes only: the light zygote's full one is its child too.
    """
    for _ in range(_MAX_SWEEPS):
        try:
            os.kill(-1 if group is None else -group, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is gone: its last processes may still wait to be reaped
        try:
            while os.waitpid(-1 if group is None else -group, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.001)  # some are still dying: sweep again


def empty_run_tmp(path="tmp"):
    """
    Remove what the run left in its ``tmp/`` (all of it the sandbox user's own), first giving
    back u+rwx to directories the run locked (codejail's ``rm -rf`` cannot enter a directory made
    unreadable). Walks by changing into each directory and naming entries relative to it, so no
    path grows with the depth: a tree deeper than PATH_MAX is removed too, and no descriptor is
    held per level (RLIMIT_NOFILE). Iterative; best effort. Every process of the run is dead by
    now, so nothing moves under the walk.
    """
    try:
        home = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        tmp = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchdir(tmp)
        finally:
            os.close(tmp)
        levels, names = [_unlink_files_here()], []
        while levels:
            if levels[-1]:
                name = levels[-1].pop()
                try:
                    os.chmod(name, 0o700)
                    os.chdir(name)
                except OSError:
                    continue
                names.append(name)
                levels.append(_unlink_files_here())
                continue
            levels.pop()
            if names:
                os.chdir("..")
                try:
                    os.rmdir(names.pop())
                except OSError:
                    pass
    except OSError:
        pass
    finally:
        os.fchdir(home)
        os.close(home)


def _unlink_files_here():
    """Unlink every non-directory in the working directory; the names of its subdirectories."""
    subdirectories = []
    try:
        with os.scandir(".") as scan:
            for entry in scan:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirectories.append(entry.name)
                    else:
                        os.unlink(entry.name)
                except OSError:
                    pass
    except OSError:
        pass
    return subdirectories


def memory_bound(config, address_space_offset=0, soft=None):
    """
    The most memory (bytes) all of a run's processes may take together, or None for no bound:
    ``run_memory_factor`` x the run's VMEM (its RLIMIT_AS, ``soft`` or this process's, less
    ``address_space_offset``: what a warm sandbox's zygote had mapped, which RLIMIT_AS counts on
    top of; a course's limit override scales it), or ``run_memory_bytes`` when given.
    """
    if config.get("run_memory_bytes"):
        return int(config["run_memory_bytes"])
    soft = resource.getrlimit(resource.RLIMIT_AS)[0] if soft is None else soft
    factor = config["run_memory_factor"]  # load_config fills in the layer's DEFAULTS
    if not factor or soft == resource.RLIM_INFINITY:
        return None
    return int(factor * (soft - address_space_offset))


def cpu_bound(config, soft=None):
    """
    The most CPU time (seconds) all of a run's processes may use together, or None for no bound:
    ``run_cpu_factor`` x the run's RLIMIT_CPU (``soft`` or this process's: codejail's CPU, per
    process; a course's limit override scales it). RLIMIT_CPU alone lets each of a run's
    processes use that much, so a run that forks could hold every core for its whole REALTIME.
    """
    soft = resource.getrlimit(resource.RLIMIT_CPU)[0] if soft is None else soft
    factor = config.get("run_cpu_factor", 3)
    if not factor or soft == resource.RLIM_INFINITY:
        return None
    return factor * soft


class RunWatchdog:
    """
    Sums, over the reaper's descendants, the memory they hold and the CPU time they have used,
    against the run's bounds (either may be None).

    Memory: what each process holds beyond what it was born with, the reaper's own resident
    anonymous and shared memory (the interpreter, and a warm sandbox's preloaded modules), which
    every process maps copy-on-write. A process's new memory is what its RssAnon + RssShmem grew
    by, plus the inherited pages it wrote to: each such write copies the page (copy-on-write)
    without changing RssAnon, so 14 children rewriting a zygote's ~150 MiB of preloaded heap
    would hold 2 GiB unseen. Every page a process made or copied took it a page fault (its
    minflt, counted from its fork), and it can copy no more than it inherited: so each counts as
    ``max(grown, min(faults, grown + baseline))``. It overcounts at most the baseline per busy
    process (faults of pages freed again, of files), never undercounts.

    CPU: each live process's user + system time with that of the children it has reaped, plus
    that of every process the reaper itself has reaped since the run began (RUSAGE_CHILDREN: a
    zygote's counts its earlier runs too). The reaper's own time is not the run's.

    Both are read without ptrace access (the run is not dumpable): /proc/<pid>/status and stat.
    ``group``: only the descendants in that process group are the run's (a zygote's: the light
    zygote's full one is its child too, and no process of a run can leave the run's group).
    """

    def __init__(self, memory_bytes=None, cpu_seconds=None, group=None):
        self.memory_bytes = memory_bytes
        self.cpu_seconds = cpu_seconds
        self.group = group
        self.baseline = _private_and_shared_bytes(os.getpid()) if memory_bytes else 0
        self.reaped_before = _reaped_cpu_seconds()

    def held(self, pid, minor_faults):
        """What ``pid`` holds beyond what it was born with, as above (bytes)."""
        grown = max(0, _private_and_shared_bytes(pid) - self.baseline)
        return max(grown, min(minor_faults * PAGE, grown + self.baseline))

    def over(self):
        """
        When the run's processes are over a bound now: ``(signal, note)``, the signal a process
        over its own RLIMIT_AS (SIGKILL) or RLIMIT_CPU (SIGXCPU) gets, and what to tell the
        author; else None.
        """
        memory, ticks = 0, 0
        for pid in _descendants(os.getpid()):
            fields = _stat_fields(pid)
            if fields is None:
                continue  # gone meanwhile: its time is in RUSAGE_CHILDREN once reaped
            if self.group is not None and fields["pgrp"] != self.group:
                continue
            if self.memory_bytes:
                memory += self.held(pid, fields["minflt"])
            ticks += fields["cpu_ticks"]
        if self.memory_bytes and memory > self.memory_bytes:
            return signal.SIGKILL, (f"its processes held more than {self.memory_bytes // (1024 * 1024)} MiB "
                                    "of memory together")
        if self.cpu_seconds:
            used = ticks / CLOCK_TICKS + _reaped_cpu_seconds() - self.reaped_before
            if used > self.cpu_seconds:
                return signal.SIGXCPU, f"its processes used more than {self.cpu_seconds:g} s of CPU time together"
        return None


def _reaped_cpu_seconds():
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return reaped.ru_utime + reaped.ru_stime


def _descendants(pid):
    """Every process below ``pid``, from the kernel's children lists (orphans are ours too)."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # gone meanwhile
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", "rb") as children:
                    kids = [int(child) for child in children.read().split()]
            except OSError:
                continue
            found += kids
            pending += kids
    return found


def _private_and_shared_bytes(pid):
    """RssAnon + RssShmem of ``pid`` (anonymous, and shared: MAP_SHARED, tmpfs, SysV), or 0."""
    total = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith((b"RssAnon:", b"RssShmem:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def _stat_fields(pid):
    """
    From /proc/<pid>/stat (this package is installed alone into the sandbox venv, so it has its
    own reader): ``pgrp``, its process group, ``minflt``, the minor page faults of all its threads
    since its fork, and ``cpu_ticks``, the user + system time of all its threads and of the
    children it has reaped (utime, stime, cutime, cstime); or None once it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # After the command's closing parenthesis: the state is field 3, pgrp field 5,
            # minflt field 10, utime..cstime fields 14-17.
            fields = stat.read().rsplit(b")", 1)[1].split()
        return {"pgrp": int(fields[2]), "minflt": int(fields[7]),
                "cpu_ticks": sum(int(field) for field in fields[11:15])}
    except (OSError, ValueError, IndexError):
        return None


def wait_for_reaper(reaper):
    """Run by the leader: wait for the reaper, exit as it did. Never returns."""
    status = None
    try:
        # Nothing of the run's output passes through the leader.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        while status is None:
            pid, wait_status = os.waitpid(reaper, 0)
            if pid == reaper:
                status = wait_status
    finally:
        _exit_like(status)


def leave_the_leader(leader):
    """
    Run by the reaper, first: a process group of its own (out of reach of codejail's
    ``pkill -g <leader>``), told of the leader's death, and subreaper of what the code forks.
    """
    os.setpgid(0, 0)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, LEADER_GONE})
    process.set_parent_death_signal(LEADER_GONE)
    process.become_subreaper()


def code_starts():
    """Run by the code's process after the fork: the signal mask a fresh process has."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def supervise(child, leader, watchdog):
    """
    Run by the reaper: wait until ``child`` exits, the leader dies, or ``watchdog`` (a
    RunWatchdog, or None) finds the run over a bound; then end the run's every process, clean
    up, exit as ``child`` did (or, past a bound, as killed by the watchdog's signal). Never returns.
    """
    status = None
    try:
        status = watch(child, watchdog, leader)
        kill_the_rest()
        empty_run_tmp()
    finally:
        _exit_like(status)


def watch(child, watchdog, leader=None, stderr=2, group=None, ending=None):
    """
    Wait until ``child`` exits, ``leader`` (if given) dies, or ``watchdog`` (a RunWatchdog, or
    None) finds the run over a bound. ``child``'s wait status; past a bound, as if killed by the
    watchdog's signal, with its note written to the run's ``stderr`` (a descriptor: the app
    reads it to its end, so the write cannot block for long); None if the leader died first.
    ``group``: as for ``kill_the_rest``. SIGCHLD (and LEADER_GONE) must be blocked: they are waited for.

    ``ending``: ``(fd, heard)``, a pipe on which the run may say it is done (a zygote's run:
    zygote.py, ``say_done``): what it says there is handed to ``heard`` and None returned, its
    process not yet reaped.
    """
    status = None
    next_look = 0.0
    while True:
        status = _reap(child, status, group)
        if status is not None or (leader is not None and os.getppid() != leader):
            return status
        now = time.monotonic()
        if watchdog is not None and now >= next_look:
            # Paced by the clock, not by wake-ups: a storm of SIGCHLD (a fork chain) must not
            # spend the reaper's own CPU time.
            next_look = now + WATCH_INTERVAL_SECONDS
            verdict = watchdog.over()
            if verdict:
                kill_the_rest(group)
                _say(stderr, f"\n[codejail-service: the run was ended: {verdict[1]}]\n")
                return verdict[0]  # as a wait status: killed by that signal
        timeout = max(next_look - now, 0.001) if watchdog is not None else 1.0
        if ending is None:
            signal.sigtimedwait({signal.SIGCHLD, LEADER_GONE}, timeout)
            continue
        # SIGCHLD does not end the wait on the pipe: the run's exit closes it (its end of file),
        # unless a process of the run holds it too, so it is looked at no less often than this.
        fd, heard = ending
        looking = select.poll()
        looking.register(fd, select.POLLIN)
        if looking.poll(min(timeout, ENDING_LOOK_SECONDS) * 1000):
            said = os.read(fd, ENDING_BYTES)
            if said:
                heard(said)
                return None
            ending = None  # the run has closed it: SIGCHLD says when it has exited


# How often a run whose ending pipe is still open is reaped if it exits without a word (a process
# of the run holds the pipe too), and the most a run's word is read from it.
ENDING_LOOK_SECONDS = 0.05
ENDING_BYTES = 16


def _say(fd, note):
    try:
        os.write(fd, note.encode())
    except OSError:
        pass  # the app has gone: nobody reads the note


def _reap(child, status, group=None):
    """
    Reap every child that has exited (of process group ``group`` only, if given: a zygote's other
    children are not the run's), and ``child`` itself, which may have died before it took its
    group; the code process's wait status once it has.
    """
    try:
        while True:
            pid, wait_status = os.waitpid(-group if group else -1, os.WNOHANG)
            if not pid:
                break
            if pid == child:
                status = wait_status
    except ChildProcessError:
        pass
    if status is None and group:
        try:
            pid, wait_status = os.waitpid(child, os.WNOHANG)
            if pid:
                status = wait_status
        except ChildProcessError:
            pass
    return status


def _exit_like(status):
    """Exit with the child's exit code, or die of the signal that killed it."""
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else 1)
