"""
The layer against the real kernel, each in a forked child (confinement cannot be undone).
Every denial sits next to the nearest allowed action.
"""
import ctypes
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from codejail_service import confinement
from codejail_service.confinement import landlock, process, seccomp
from codejail_service.confinement.policy import build_policy

from .conftest import errno_of, in_child

STDLIB = os.path.dirname(os.__file__)


def landlocked(run_dir, then):
    """A child function: apply the Landlock part of the policy for ``run_dir``, then ``then()``."""
    def child():
        process.set_no_new_privs()
        policy = build_policy(sys.prefix, run_dir, stdlib_dir=STDLIB)
        # This test process runs from the dev venv, whose packages live under sys.prefix too.
        landlock.restrict_self(policy["landlock"], landlock.abi_version())
        return then()
    return child


def seccomped(then):
    def child():
        seccomp.load(build_policy(sys.prefix, "/nonexistent")["seccomp"])
        return then()
    return child


def test_kernel_has_the_landlock_abi_the_policy_needs():
    assert landlock.abi_version() >= max(confinement.REQUIRED_ABI.values())


# --- Landlock: files ------------------------------------------------------------------------

def test_landlock_denies_reading_outside_the_policy(run_dir):
    value, _ = in_child(landlocked(run_dir, lambda: [
        errno_of(lambda: open("/etc/passwd", "rb").close()),
        errno_of(lambda: os.listdir("/")),
        errno_of(lambda: open("/proc/self/environ", "rb").close()),
    ]))
    assert value == ["EACCES", "EACCES", "EACCES"]


def test_landlock_allows_reading_the_run_dir_and_stdlib(run_dir):
    value, _ = in_child(landlocked(run_dir, lambda: [
        errno_of(lambda: open(os.path.join(run_dir, "jailed_code"), "rb").close()),
        errno_of(lambda: open(os.__file__, "rb").close()),
        errno_of(lambda: os.listdir(run_dir)),
    ]))
    assert value == ["ok", "ok", "ok"]


def test_landlock_denies_writing_outside_the_run_dir(run_dir):
    target = "/tmp/codejail-confinement-test-escape"
    value, _ = in_child(landlocked(run_dir, lambda: errno_of(lambda: open(target, "w").close())))
    assert value == "EACCES"
    assert not os.path.exists(target)


def test_landlock_allows_writing_in_the_run_dir(run_dir):
    value, _ = in_child(landlocked(run_dir, lambda: errno_of(
        lambda: open(os.path.join(run_dir, "tmp", "out"), "w").close())))
    assert value == "ok"


def test_landlock_denies_executing_anything(run_dir):
    value, _ = in_child(landlocked(run_dir, lambda: errno_of(lambda: os.execv("/usr/bin/true", ["true"]))))
    assert value == "EACCES"


def test_landlock_denies_symlinks_in_the_run_dir_but_allows_fifos(run_dir):
    tmp = os.path.join(run_dir, "tmp")
    value, _ = in_child(landlocked(run_dir, lambda: [
        errno_of(lambda: os.symlink("/etc", os.path.join(tmp, "link"))),
        errno_of(lambda: os.mkfifo(os.path.join(tmp, "fifo"))),
    ]))
    assert value == ["EACCES", "ok"]


# --- Landlock: network and scopes ---------------------------------------------------------------

def test_landlock_denies_tcp_connect_and_bind(run_dir):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def attempt():
            with socket.socket() as client, socket.socket() as server:
                return [errno_of(lambda: client.connect(("127.0.0.1", port))),
                        errno_of(lambda: server.bind(("127.0.0.1", 0)))]
        value, _ = in_child(landlocked(run_dir, attempt))
    assert value == ["EACCES", "EACCES"]


def test_landlock_allows_unix_sockets_in_the_run_dir(run_dir):
    def attempt():
        with socket.socket(socket.AF_UNIX) as server:
            return errno_of(lambda: server.bind(os.path.join(run_dir, "tmp", "s.sock")))
    value, _ = in_child(landlocked(run_dir, attempt))
    assert value == "ok"


def test_landlock_scope_denies_signalling_outside_the_domain(run_dir):
    value, _ = in_child(landlocked(run_dir, lambda: errno_of(lambda: os.kill(os.getppid(), 0))))
    assert value == "EPERM"


def test_landlock_scope_allows_signalling_own_children(run_dir):
    def attempt():
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            time.sleep(5)
            os._exit(0)
        outcome = errno_of(lambda: os.kill(pid, signal.SIGKILL))
        os.waitpid(pid, 0)
        return outcome
    value, _ = in_child(landlocked(run_dir, attempt))
    assert value == "ok"


# --- seccomp ----------------------------------------------------------------------------------------

def test_seccomp_refuses_network_sockets_with_eacces():
    value, _ = in_child(seccomped(lambda: [
        errno_of(lambda: socket.socket(socket.AF_INET).close()),
        errno_of(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()),
        errno_of(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()),
    ]))
    assert value == ["EACCES", "EACCES", "EACCES"]


def test_seccomp_allows_unix_sockets():
    value, _ = in_child(seccomped(lambda: errno_of(lambda: socket.socketpair()[0].close())))
    assert value == "ok"


def test_seccomp_refuses_connecting_or_addressing_unix_sockets(tmp_path):
    path = str(tmp_path / "host.sock")
    with socket.socket(socket.AF_UNIX) as listener, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram:
        listener.bind(path)
        listener.listen(1)
        dgram.bind(path + ".dgram")
        value, _ = in_child(seccomped(lambda: [
            errno_of(lambda: socket.socket(socket.AF_UNIX).connect(path)),
            errno_of(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", path + ".dgram")),
            errno_of(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendmsg([b"x"], [], 0,
                                                                                     path + ".dgram")),
        ]))
    assert value == ["EACCES", "EACCES", "EACCES"]


def test_seccomp_allows_sending_on_connected_pairs():
    def attempt():
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.send(b"ping")
        return b.recv(4).decode()
    value, _ = in_child(seccomped(attempt))
    assert value == "ping"


def test_seccomp_refuses_exec_and_namespaces():
    libc = ctypes.CDLL(None, use_errno=True)

    def unshare_user():
        if libc.unshare(0x10000000) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
    value, _ = in_child(seccomped(lambda: [
        errno_of(lambda: subprocess.run(["/usr/bin/true"], check=False)),
        errno_of(unshare_user),
        errno_of(os.setsid),
    ]))
    assert value == ["EACCES", "EPERM", "EPERM"]


def test_seccomp_allows_fork_through_clone():
    def attempt():
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            os._exit(3)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    value, _ = in_child(seccomped(attempt))
    assert value == 3


def test_seccomp_makes_clone3_fall_back_to_clone():
    libc = ctypes.CDLL(None, use_errno=True)
    value, _ = in_child(seccomped(lambda: [libc.syscall(435, None, 0), ctypes.get_errno()]))
    assert value == [-1, 38]  # ENOSYS


SO_SNDBUF, SO_RCVBUF, SO_KEEPALIVE, F_SETPIPE_SZ, F_GETPIPE_SZ = 7, 8, 9, 1031, 1032


def test_seccomp_refuses_growing_kernel_buffers():
    """Socket and pipe buffers stay at their default size: kernel memory no RSS shows."""
    libc = ctypes.CDLL(None, use_errno=True)

    def raw_setsockopt(fd, level, option):
        """setsockopt(2) with the given 64-bit level and option: high bits the kernel ignores."""
        value = ctypes.c_int(4 << 20)
        if libc.syscall(54, fd, ctypes.c_long(level), ctypes.c_long(option), ctypes.byref(value), 4) == 0:
            return "ok"
        return errno.errorcode[ctypes.get_errno()]

    def attempts():
        left, right = socket.socketpair()
        read_end, _ = os.pipe()
        return [errno_of(lambda: left.setsockopt(socket.SOL_SOCKET, SO_SNDBUF, 4 << 20)),
                errno_of(lambda: left.setsockopt(socket.SOL_SOCKET, SO_RCVBUF, 4 << 20)),
                raw_setsockopt(left.fileno(), 1 | 1 << 32, SO_SNDBUF | 1 << 32),
                errno_of(lambda: fcntl.fcntl(read_end, F_SETPIPE_SZ, 1 << 20))]
    value, _ = in_child(seccomped(attempts))
    assert value == ["EPERM", "EPERM", "EPERM", "EPERM"]


def test_seccomp_allows_reading_buffer_sizes_and_harmless_socket_options():
    def attempts():
        left, right = socket.socketpair()
        read_end, _ = os.pipe()
        return [errno_of(lambda: left.getsockopt(socket.SOL_SOCKET, SO_SNDBUF)),
                errno_of(lambda: left.setsockopt(socket.SOL_SOCKET, SO_KEEPALIVE, 1)),
                errno_of(lambda: fcntl.fcntl(read_end, F_GETPIPE_SZ)),
                errno_of(lambda: os.set_blocking(read_end, False)),
                errno_of(lambda: os.dup(read_end))]
    value, _ = in_child(seccomped(attempts))
    assert value == ["ok", "ok", "ok", "ok", "ok"]


def test_seccomp_kills_x32_syscalls():
    # getpid() through the x32 ABI: not our architecture, so the process is killed.
    libc = ctypes.CDLL(None, use_errno=True)
    value, status = in_child(seccomped(lambda: libc.syscall(0x40000000 | 39)))
    assert value is None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_seccomp_allows_native_syscalls():
    libc = ctypes.CDLL(None, use_errno=True)
    value, status = in_child(seccomped(lambda: libc.syscall(39) > 0))
    assert value is True and os.WIFEXITED(status)


# --- The whole layer: confine(), the reaper, its config ------------------------------------------------

ENFORCE = dict(confinement.DEFAULTS)


def test_confine_applies_every_layer_and_reaps_leftover_processes(run_dir):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- becomes the reaper, then the confined code
        os.close(read_end)
        os.chdir(run_dir)
        status = confinement.confine(ENFORCE)
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        os.write(write_end, json.dumps({"status": status, "leftover": child}).encode())
        os._exit(5)
    os.close(write_end)
    with os.fdopen(read_end) as report:
        data = json.loads(report.read())
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 5  # the reaper exits as the code did
    assert data["status"]["layers"] == ["landlock.fs", "landlock.net", "landlock.scope", "seccomp", "reaper"]
    assert data["status"]["missing"] == []
    with pytest.raises(ProcessLookupError):
        os.kill(data["leftover"], 0)  # killed and reaped before the reaper exited


def _locked_directories():
    os.makedirs("tmp/a/b")
    open("tmp/a/b/f", "w").close()
    open("tmp/top", "w").close()
    os.chmod("tmp/a/b", 0)
    os.chmod("tmp/a", 0)


def _a_tree_deeper_than_path_max():
    os.chdir("tmp")
    for level in range(20):  # 20 x 251 characters: past PATH_MAX (4096)
        name = f"{level:02d}" + "d" * 249
        os.mkdir(name)
        open(name[:8] + ".file", "w").close()
        os.chdir(name)
    os.chmod(".", 0)


@pytest.mark.parametrize("leave", [_locked_directories, _a_tree_deeper_than_path_max])
def test_reaper_empties_tmp_of_what_its_cleanup_could_not_enter(run_dir, leave):
    """Left behind, either would outlast the run (codejail's rm -rf cannot enter the first)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        os.chdir(run_dir)
        confinement.confine(ENFORCE)
        leave()
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.listdir(os.path.join(run_dir, "tmp")) == []


def test_a_runs_processes_may_hold_as_many_descriptors_as_run_open_files(run_dir):
    def open_all_free(more):
        """Open every descriptor number the limit leaves free (pytest holds some), and ``more``."""
        def child():
            limit = ENFORCE["run_open_files"]
            held = sum(int(fd) < limit for fd in os.listdir("/proc/self/fd")) - 1  # not listdir's own
            free = limit - held
            os.chdir(run_dir)
            confinement.confine(ENFORCE)
            return errno_of(lambda: [os.open(os.devnull, os.O_RDONLY) for _ in range(free + more)])
        return child
    allowed, _ = in_child(open_all_free(0))
    refused, _ = in_child(open_all_free(1))
    assert (allowed, refused) == ("ok", "EMFILE")


SPIN = ("import os\nkids = []\nfor _ in range({children}):\n    pid = os.fork()\n    if pid == 0:\n"
        "        until = time.process_time() + {seconds}\n        while time.process_time() < until:\n"
        "            pass\n        os._exit(0)\n    kids.append(pid)\nfor kid in kids:\n    os.waitpid(kid, 0)\n")


@pytest.mark.parametrize(("children", "seconds", "ended"), [(1, 0.2, False), (3, 0.4, True)])
def test_cpu_watchdog_bounds_what_the_runs_processes_use_together(run_dir, children, seconds, ended):
    """
    RLIMIT_CPU 1 s per process, and run_cpu_factor 0.6: 0.6 s for all of them together. Three
    children of 0.4 s each, each under its own limit, are ended; one of 0.2 s is not.
    """
    _assert_watchdog_verdict(run_dir, SPIN.format(children=children, seconds=seconds), ended,
                             bound={"run_cpu_factor": 0.6}, cpu_limit=1,
                             ended_by=(signal.SIGXCPU, b"used more than 0.6 s of CPU time together]"))


def test_reaper_leaves_the_run_dir_itself(run_dir):
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        os.chdir(run_dir)
        confinement.confine(ENFORCE)
        os._exit(0)
    os.waitpid(pid, 0)
    assert sorted(os.listdir(run_dir)) == ["jailed_code", "tmp"]


def test_confine_relays_death_by_signal(run_dir):
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        import faulthandler
        faulthandler.disable()  # pytest's: it would print this child's "crash"
        os.chdir(run_dir)
        confinement.confine(ENFORCE)
        os.kill(os.getpid(), signal.SIGSEGV)
    _, wait_status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) == signal.SIGSEGV


def test_confine_refuses_a_working_directory_that_is_not_a_run_dir(tmp_path):
    value, _ = in_child(lambda: (os.chdir("/tmp"), confinement.confine(ENFORCE)))
    assert value["raised"] == "ConfinementRefused"


@pytest.mark.parametrize("parents", [["/nonexistent", "/tmp"], "/tmp"])
def test_find_run_dir_accepts_a_run_dir_in_any_configured_parent(run_dir, parents):
    config = {**ENFORCE, "run_dir_parent": parents}
    value, _ = in_child(lambda: (os.chdir(run_dir), confinement.find_run_dir(config))[1])
    assert value == run_dir


@pytest.mark.parametrize("parents", [["/nonexistent", "/var/tmp"], "/var/tmp", []])
def test_find_run_dir_refuses_a_run_dir_in_no_configured_parent(run_dir, parents):
    config = {**ENFORCE, "run_dir_parent": parents}
    value, _ = in_child(lambda: (os.chdir(run_dir), confinement.find_run_dir(config))[1])
    assert value["raised"] == "ConfinementRefused"


def test_confine_refuses_a_run_dir_made_by_the_sandbox_user_itself(run_dir):
    os.chown(run_dir, 0, 0)  # owned by us (root) now
    value, _ = in_child(lambda: (os.chdir(run_dir), confinement.confine(ENFORCE)))
    assert value["raised"] == "ConfinementRefused"


def test_confine_does_nothing_when_switched_off():
    value, _ = in_child(lambda: confinement.confine({**ENFORCE, "mode": "off"}))
    assert value == {"mode": "off", "layers": [], "missing": [], "landlock_abi": None}


def test_confine_refuses_a_multithreaded_interpreter(run_dir):
    import threading

    def attempt():
        threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
        os.chdir(run_dir)
        return confinement.confine(ENFORCE)
    value, _ = in_child(attempt)
    assert value["raised"] == "ConfinementRefused" and "multi-threaded" in value["text"]


def test_config_missing_means_enforce(tmp_path):
    assert confinement.load_config(str(tmp_path / "absent.json")) == confinement.DEFAULTS


def test_config_written_by_root_only_is_read(tmp_path):
    path = tmp_path / "confinement.json"
    path.write_text('{"mode": "off"}')
    os.chmod(path, 0o644)
    assert confinement.load_config(str(path))["mode"] == "off"


@pytest.mark.parametrize("problem", ["group-writable", "not-root", "bad-mode", "symlink"])
def test_config_others_could_change_is_refused(tmp_path, problem):
    path = tmp_path / "confinement.json"
    path.write_text('{"mode": "enforce"}' if problem != "bad-mode" else '{"mode": "lax"}')
    os.chmod(path, 0o644)
    if problem == "group-writable":
        os.chmod(path, 0o664)
    elif problem == "not-root":
        os.chown(path, 65534, 65534)
    elif problem == "symlink":
        link = tmp_path / "link.json"
        link.symlink_to(path)
        path = link
    with pytest.raises((confinement.ConfinementRefused, OSError)):
        confinement.load_config(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) in (0o644, 0o664)


def test_hook_skips_root_processes():
    # Provisioning runs pip in the sandbox venv as root: the hook must leave it alone.
    value, _ = in_child(lambda: (confinement.confine_from_site(), confinement.STATUS["mode"])[1])
    assert value == "not-run"


# --- Default deny: what a run may do to other processes, and what outlives it ---------------------

def test_seccomp_refuses_changing_another_process_of_the_same_user():
    def child():
        other = os.fork()
        if other == 0:
            time.sleep(5)
            os._exit(0)
        try:
            seccomp.load(build_policy(sys.prefix, "/nonexistent")["seccomp"])
            import resource
            return [errno_of(lambda: resource.prlimit(other, resource.RLIMIT_NOFILE, (16, 16))),
                    errno_of(lambda: os.setpriority(os.PRIO_PROCESS, other, 10)),
                    errno_of(lambda: os.sched_setaffinity(other, {0}))]
        finally:
            os.kill(other, signal.SIGKILL)
    value, _ = in_child(child)
    assert value == ["EPERM", "EPERM", "EPERM"]


def test_seccomp_allows_changing_the_caller_itself():
    def child():
        import resource
        seccomp.load(build_policy(sys.prefix, "/nonexistent")["seccomp"])
        return [errno_of(lambda: resource.prlimit(0, resource.RLIMIT_NOFILE, (64, 64))),
                errno_of(lambda: os.setpriority(os.PRIO_PROCESS, 0, 10)),
                errno_of(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))]
    value, _ = in_child(child)
    assert value == ["ok", "ok", "ok"]


def test_reaper_outlives_the_time_limit_kill_and_ends_a_fork_chain(run_dir):
    """codejail's time limit kills the leader's process group; the reaper, outside it, ends the rest."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the leader, as codejail starts it (a session of its own)
        os.close(read_end)
        os.setsid()
        os.chdir(run_dir)
        confinement.confine(ENFORCE)
        if os.fork() == 0:  # a chain: each process forks its successor and exits, for 8 s
            until = time.time() + 8
            while time.time() < until:
                try:
                    if os.fork():
                        os._exit(0)
                except OSError:
                    pass
            os._exit(0)
        os.write(write_end, b"started")
        time.sleep(30)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        assert report.read(7) == b"started"
        time.sleep(0.3)
        os.killpg(pid, signal.SIGKILL)  # sudo pkill -9 -g <leader>
        killed = time.monotonic()
        assert report.read() == b""  # every process holding the pipe is gone: the chain too
        ended = time.monotonic() - killed
    os.waitpid(pid, 0)
    assert ended < 1.0, f"the run's last process ended {ended:.2f} s after the time limit"


FORKED_MIB = ("import os\nkids = []\nfor _ in range(2):\n    pid = os.fork()\n    if pid == 0:\n"
              "        b = bytearray({mib} << 20)\n        time.sleep(0.5)\n        os._exit(0)\n"
              "    kids.append(pid)\nfor kid in kids:\n    os.waitpid(kid, 0)\n")


WATCHDOG_BOUND = 100 << 20


def _assert_watchdog_verdict(run_dir, code, ended, inherited_mib=0, bound=None, cpu_limit=None,
                             ended_by=(signal.SIGKILL, b"of memory together]")):
    """
    Run ``code`` in ``run_dir``, confined under ``bound`` (default: a memory bound of 100 MiB;
    ``cpu_limit``: the RLIMIT_CPU the layer scales), with ``inherited_mib`` MiB made resident
    before the layer (a warm sandbox's preloaded heap, in the baseline, as ``inherited``); assert
    the reaper ended it with ``ended_by`` (its signal, and what its note says), or not.
    """
    bound = bound or {"run_memory_bytes": WATCHDOG_BOUND}
    err_read, err_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        os.dup2(err_write, 2)
        os.setsid()
        os.chdir(run_dir)
        if cpu_limit:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, resource.RLIM_INFINITY))
        inherited = bytearray(b"\x01") * (inherited_mib << 20)  # written: resident, in the baseline
        status = confinement.confine({**ENFORCE, **bound})
        assert status["memory_bound"] or status["cpu_bound"], status
        exec(code, {"time": time, "inherited": inherited})  # the test's own code
        os._exit(0)
    os.close(err_write)
    with os.fdopen(err_read, "rb") as err:
        stderr = err.read()
    _, wait_status = os.waitpid(pid, 0)
    if ended:
        assert os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) == ended_by[0], stderr
        assert ended_by[1] in stderr
    else:
        assert os.waitstatus_to_exitcode(wait_status) == 0, stderr


@pytest.mark.parametrize(("mib", "ended"), [(16, False), (100, True)])
def test_memory_watchdog_bounds_what_the_runs_processes_hold_together(run_dir, mib, ended):
    """
    Two children of ``mib`` MiB each, against a bound of 100 MiB: what each process was born with
    (this pytest's memory, copied into every child) does not count.
    """
    _assert_watchdog_verdict(run_dir, FORKED_MIB.format(mib=mib), ended)


# Three children of what the run inherited (a warm sandbox's preloaded heap, here 48 MiB made
# before the layer): each writes to every page (copy-on-write: a copy each) or only reads them.
TOUCH_INHERITED = ("import os\nkids = []\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n"
                   "        for i in range(0, len(inherited), 4096):\n            {touch}\n"
                   "        time.sleep(0.5)\n        os._exit(0)\n    kids.append(pid)\n"
                   "for kid in kids:\n    os.waitpid(kid, 0)\n")


@pytest.mark.parametrize(("touch", "ended"), [("inherited[i]", False), ("inherited[i] = 1", True)])
def test_memory_watchdog_counts_inherited_pages_the_runs_processes_copy(run_dir, touch, ended):
    """
    Copy-on-write copies leave RssAnon as it was: 3 x 48 MiB of copies, against a bound of
    100 MiB, end the run; reading the same pages copies nothing and does not.
    """
    _assert_watchdog_verdict(run_dir, TOUCH_INHERITED.format(touch=touch), ended, inherited_mib=48)


def test_zygote_is_confined_before_it_imports_and_its_runs_further(run_dir):
    """The zygote may read code and use its slot's run root; a run it forks is refused setsid."""
    parent = os.path.dirname(run_dir)
    config = {**ENFORCE, "run_dir_parent": [parent]}

    def zygote():
        confinement.confine_zygote(config, "codejail-sandbox-0")
        seen = [errno_of(lambda: open("/etc/passwd", "rb").close()),
                errno_of(lambda: open(os.path.join(run_dir, "jailed_code"), "rb").close())]
        value, _ = in_child(lambda: [errno_of(os.setsid), os.chdir(run_dir),
                                     confinement.confine(config)["layers"], errno_of(os.setsid)])
        return seen + value
    value, _ = in_child(zygote)
    assert value[:3] == ["EACCES", "ok", "ok"]  # setsid: allowed to the zygote's runs' start
    assert value[4][-1] == "reaper" and value[5] == "EPERM"  # the run's own filter refuses it


def test_zygote_run_root_is_its_slots(run_dir):
    config = {**ENFORCE, "run_dir_parent": ["/runs/0", "/runs/1"]}
    assert confinement.zygote_run_root(config, "codejail-sandbox-1") == "/runs/1"
    assert confinement.zygote_run_root({**ENFORCE, "run_dir_parent": "/tmp"}, "anyone") == "/tmp"
    with pytest.raises(confinement.ConfinementRefused):
        confinement.zygote_run_root(config, "codejail-sandbox-7")


# --- seccomp: side channels between runs (docs/decisions/0010-side-channels-between-runs.rst) --

SYS_MINCORE, SYS_SYSINFO, SYS_SET_TID_ADDRESS, SYS_CACHESTAT, SYS_PREADV2, SYS_FUTEX = 27, 99, 218, 451, 327, 202
RWF_NOWAIT, FUTEX_WAIT, FUTEX_WAKE, FUTEX_PRIVATE_FLAG = 8, 0, 1, 128


def raw_call(number, *args):
    """syscall(2): "ok", or the errno's name."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(ctypes.c_long(number), *[ctypes.c_long(arg) for arg in args]) >= 0:
        return "ok"
    return errno.errorcode[ctypes.get_errno()]


def file_page(fd):
    """The address of a read-only private mapping of ``fd``'s first page: keyed by the file, as every
    run's mapping of the same shared library or module is."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return libc.mmap(None, 4096, 1, 2, fd, 0)  # PROT_READ, MAP_PRIVATE


def test_seccomp_refuses_what_tells_of_other_runs(tmp_path):
    """Each with the errno its callers handle best (syscalls.py says why)."""
    def attempts():
        buffer = ctypes.create_string_buffer(4096)
        iov = (ctypes.c_void_p * 2)(ctypes.addressof(buffer), 4096)
        with open(__file__, "rb") as shared:
            page = file_page(shared.fileno())
            lock = bytes((ctypes.c_short * 16)(fcntl.F_WRLCK, 0))
            return [errno_of(lambda: os.statvfs("/")),
                    errno_of(lambda: os.fstatvfs(shared.fileno())),
                    raw_call(SYS_MINCORE, page, 4096, ctypes.addressof(buffer)),
                    errno_of(lambda: fcntl.flock(shared, fcntl.LOCK_EX | fcntl.LOCK_NB)),
                    errno_of(lambda: fcntl.fcntl(shared, fcntl.F_GETLK, lock)),
                    errno_of(lambda: fcntl.fcntl(shared, 36, lock)),  # F_OFD_GETLK
                    raw_call(SYS_SYSINFO, ctypes.addressof(buffer)),
                    raw_call(SYS_CACHESTAT, shared.fileno(), 0, 0, 0),
                    raw_call(SYS_PREADV2, shared.fileno(), ctypes.addressof(iov), 1, 0, 0, RWF_NOWAIT),
                    errno_of(lambda: os.posix_fadvise(shared.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)),
                    raw_call(SYS_FUTEX, page, FUTEX_WAKE, 1, 0, 0, 0),
                    raw_call(SYS_SET_TID_ADDRESS, page)]
    value, _ = in_child(seccomped(attempts))
    assert value == ["ENOSYS", "ENOSYS", "ENOSYS", "ENOSYS", "EPERM", "EPERM", "EPERM", "EPERM", "EPERM",
                     "EPERM", "EPERM", "EPERM"]


def test_seccomp_allows_locks_futexes_and_reads_of_the_runs_own(tmp_path):
    """The nearest allowed twins: a run's own locks and threads, plain reads and hints."""
    import sqlite3
    import threading

    def attempts():
        database = sqlite3.connect(str(tmp_path / "grades.db"))  # POSIX record locks
        database.execute("create table t (x)")
        database.execute("insert into t values (1)")
        database.commit()
        database.close()
        results = []
        worker = threading.Thread(target=lambda: results.append(sum(range(1000))))
        worker.start()
        worker.join()
        libc = ctypes.CDLL(None, use_errno=True)
        thread = ctypes.c_ulong()
        start = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(lambda _: results.append(1) or 0)
        libc.pthread_create(ctypes.byref(thread), None, start, None)
        results.append(libc.pthread_join(thread, None))  # glibc waits unflagged on the thread's exit
        word = ctypes.c_int(0)
        buffer = ctypes.create_string_buffer(16)
        iov = (ctypes.c_void_p * 2)(ctypes.addressof(buffer), 16)
        with open(__file__, "rb") as shared:
            return results + [
                raw_call(SYS_FUTEX, ctypes.addressof(word), FUTEX_WAKE | FUTEX_PRIVATE_FLAG, 1, 0, 0, 0),
                raw_call(SYS_PREADV2, shared.fileno(), ctypes.addressof(iov), 1, 0, 0, 0),
                errno_of(lambda: os.posix_fadvise(shared.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)),
                errno_of(lambda: os.posix_fadvise(shared.fileno(), 0, 0, os.POSIX_FADV_NOREUSE)),
                errno_of(lambda: fcntl.lockf(shared, fcntl.LOCK_SH | fcntl.LOCK_NB)),
                errno_of(lambda: os.sysconf("SC_NPROCESSORS_ONLN"))]
    value, status = in_child(seccomped(attempts))
    assert value == [499500, 1, 0, "ok", "ok", "ok", "ok", "ok", "ok"], value
