"""
The default-deny sandbox against what an independent audit got out of a run: data left for later
runs (SysV IPC, POSIX shared memory, memfd), processes outliving their answer, a run changing
its slot's other processes (the warm sandbox's zygote), and kernel surfaces no grader needs.
Each deny test sits next to its nearest allowed twin; the whole file runs with fresh
interpreters and with the warm sandbox, and the sabotage run proves each deny test fails
without our layer.
"""
import os
import signal
import textwrap

import pytest

from .conftest import SABOTAGE, zygotes
from .probe import probe
from .test_hostile import ANSWER_WITHIN, timed

# x86_64 system call numbers, called through libc's syscall(2) with harmless arguments.
CALL = """\
import ctypes, os
_libc = ctypes.CDLL(None, use_errno=True)
def call(number, *args):
    if _libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args]) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
"""
IPC_CREAT = 0o1000
KEY = 0x434A5301  # a fixed key: a later run could find what an earlier one made


# --- Nothing persists between runs --------------------------------------------------------------

@pytest.mark.parametrize(("name", "call"), [
    ("shmget", f"call(29, {KEY}, 1 << 20, {IPC_CREAT} | 0o666)"),
    ("msgget", f"call(68, {KEY}, {IPC_CREAT} | 0o666)"),
    ("semget", f"call(64, {KEY}, 1, {IPC_CREAT} | 0o666)"),
])
def test_deny_sysv_ipc(run, name, call):
    assert probe(run, CALL + call) == "EPERM", name


def test_allow_shared_memory_between_the_runs_own_processes(run):
    assert probe(run, """
        import mmap, os
        shared = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)
        pid = os.fork()
        if pid == 0:
            shared[:5] = b"hello"
            os._exit(0)
        os.waitpid(pid, 0)
        assert shared[:5] == b"hello"
    """) == "ok"


def test_deny_posix_shared_memory(run):
    assert probe(run, "open('/dev/shm/codejail-left-for-later', 'wb').close()") == "EACCES"


def test_deny_posix_message_queue(run):
    # mq_open(2) names live in the mqueue filesystem, out of Landlock's sight.
    assert probe(run, CALL + "name = ctypes.create_string_buffer(b'codejail-left')\n"
                             "call(240, ctypes.addressof(name), os.O_CREAT | os.O_RDWR, 0o666, 0)") == "EPERM"


def test_allow_pipe_between_the_runs_own_processes(run):
    assert probe(run, """
        import os
        r, w = os.pipe()
        if os.fork() == 0:
            os.write(w, b"x")
            os._exit(0)
        assert os.read(r, 1) == b"x"
        os.wait()
    """) == "ok"


def test_deny_memfd(run):
    """Memory held through a memfd would escape RLIMIT_AS (the audit held 1 GiB this way)."""
    assert probe(run, "import os; os.memfd_create('hold')") == "EPERM"


def test_allow_anonymous_memory_within_vmem(run):
    assert probe(run, "import mmap; m = mmap.mmap(-1, 64 << 20); m[::4096] = b'x' * (16384)") == "ok"


# --- No process of a run outlives its answer ----------------------------------------------------

# Each process of the chain forks its successor, then exits: it outruns `pkill -g` (a scan of
# /proc), and each new process has a fresh RLIMIT_CPU. It stops by itself after 6 s, so that a
# run without our layer (the sabotage run) does not hold its slot for ever.
FORK_CHAIN = """\
import os, time
def chain(until):
    while time.time() < until:
        try:
            if os.fork():
                os._exit(0)
        except OSError:
            pass
    os._exit(0)
if os.fork() == 0:
    chain(time.time() + 6)
"""


@pytest.mark.outside_layer  # the reaper ends it; so does the app's backstop (sandbox/processes.py)
def test_deny_fork_chain_outliving_the_time_limit(run, aftermath):
    """
    The audit's escape: codejail's timeout kill missed the chain and killed the reaper. The
    reaper alone ending it is proved in confinement/tests/test_layers.py.
    """
    result, elapsed = timed(run, FORK_CHAIN + "time.sleep(30)")
    # Ended at the time limit (-9), or before it, once the chain has used the run's CPU time (-24).
    ended = result.emsg and (result.emsg.endswith("with status code: -9") or (
        result.emsg.endswith("with status code: -24") and "s of CPU time together" in result.emsg))
    assert ended, result
    assert elapsed < ANSWER_WITHIN, f"answered after {elapsed:.1f} s"


def test_deny_fork_chain_outliving_the_code_holding_stdout(run, aftermath):
    result, elapsed = timed(run, FORK_CHAIN + "r = 1")
    assert result.emsg is None and result.globals.get("r") == 1, result
    assert elapsed < 1.5, f"the answer waited {elapsed:.1f} s for the chain"


def test_allow_children_that_end_before_the_run(run, aftermath):
    result = run("import os\nkids = [os.fork() or os._exit(7) for _ in range(3)]\n"
                 "codes = [os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids]")
    assert result.globals.get("codes") == [7, 7, 7], result


# --- A run changes no other process of its UID (the leader, the reaper, the slot's zygote) -------

# Processes of this UID other than the run's own code: /proc/<pid> can still be stat()ed
# (Landlock does not guard stat), so a run can find them, as the audit did. And one the run
# plants itself (its own child), so that the target exists however the run is started: with
# our layer off (the sabotage run) there is no leader or reaper, and without the warm sandbox
# no zygote.
OTHERS = """\
import os, time
me = os.getuid()
planted = os.fork()
if planted == 0:
    time.sleep(2)
    os._exit(0)
others = [planted]
for pid in range(max(os.getpid() - 4000, 2), os.getpid() + 4000):
    try:
        if pid not in (os.getpid(), planted) and os.stat(f'/proc/{pid}').st_uid == me:
            others.append(pid)
    except OSError:
        pass
"""


@pytest.fixture
def zygotes_it_may_have_changed_end():
    """
    In the sabotage run nothing refuses these changes: the slots' zygotes (which live as long as
    the service) would hand them to every later run they fork. End them after the test; each slot
    serves fresh interpreters until its new zygote has preloaded.
    """
    yield
    if SABOTAGE:
        for pid in zygotes():
            os.kill(pid, signal.SIGKILL)


@pytest.mark.usefixtures("zygotes_it_may_have_changed_end")
@pytest.mark.parametrize(("name", "change"), [
    ("prlimit", "import resource; resource.prlimit(pid, resource.RLIMIT_NOFILE, (16, 16))"),
    ("setpriority", "os.setpriority(os.PRIO_PROCESS, pid, 19)"),
    ("setpriority_user", "os.setpriority(os.PRIO_USER, 0, 19)"),
    ("sched_setaffinity", "os.sched_setaffinity(pid, {0})"),
    ("sched_setscheduler", "os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))"),
    ("ioprio_set", "call(251, 1, pid, (3 << 13) | 7)"),  # IOPRIO_CLASS_IDLE
])
def test_deny_changing_another_process_of_the_sandbox_user(run, name, change):
    result = run(CALL + OTHERS + "outcomes = []\nfor pid in others:\n    try:\n"
                 f"        {change}\n        outcomes.append('ok')\n"
                 "    except OSError as exc:\n        outcomes.append(exc.errno)\n"
                 "os.kill(planted, 9)\nos.waitpid(planted, 0)\n")
    outcomes = result.globals.get("outcomes")
    assert outcomes and set(outcomes) == {1}, (name, result)  # EPERM, for every one of them


def test_allow_changing_its_own_limits_priority_and_affinity(run):
    # Dedented here: appended to CALL indented, it would be the body of call()'s last `if`.
    assert probe(run, CALL + textwrap.dedent("""
        import resource
        resource.prlimit(0, resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.nice(1)
        os.sched_setaffinity(0, os.sched_getaffinity(0))
        call(251, 1, 0, (2 << 13) | 4)
    """)) == "ok"


# --- Kernel surfaces no grader needs ----------------------------------------------------------

@pytest.mark.parametrize(("name", "call"), [
    ("inotify_init1", "call(294, 0)"),  # watches outside the run dir saw other runs' file names
    ("modify_ldt", "call(154, 0, 0, 0)"),
    ("userfaultfd", "call(323, 1)"),  # UFFD_USER_MODE_ONLY: open to any user
    ("io_uring_setup", "call(425, 1, 0)"),
    # (bpf and perf_event_open: the host's sysctls refuse them to unprivileged users anyway.)
    ("keyctl", "call(250, 0, 0)"),
    ("personality", "call(135, 0x0040000)"),  # ADDR_NO_RANDOMIZE
    ("pidfd_open", "call(434, os.getppid(), 0)"),
    ("kcmp", "call(312, os.getpid(), os.getpid(), 0, 0, 0)"),  # KCMP_FILE of its own fd 0
    ("sync", "call(162)"),
])
def test_deny_system_calls_no_grader_needs(run, name, call):
    assert probe(run, CALL + call) == "EPERM", name


@pytest.mark.parametrize(("name", "call"), [
    ("getpid", "call(39)"),
    ("getrandom", "buf = ctypes.create_string_buffer(16); call(318, ctypes.addressof(buf), 16, 0)"),
    ("uname", "buf = ctypes.create_string_buffer(400); call(63, ctypes.addressof(buf))"),
    ("sched_yield", "call(24)"),
])
def test_allow_system_calls_graders_make(run, name, call):
    assert probe(run, CALL + call) == "ok", name
