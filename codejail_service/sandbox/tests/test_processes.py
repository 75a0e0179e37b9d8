"""The sandbox users' processes: /proc, every way the app kills them, the master as a subreaper."""

import ctypes
import os
import subprocess
import sys
import time
from unittest import mock

import pytest

from codejail_service.sandbox import processes


@pytest.mark.parametrize(("returncode", "stderr", "killed"), [
    (0, "", True),  # killed something
    (1, "kill: (-1): No such process\n", True),  # nothing left to kill
    (1, "sudo: a password is required\n", False),  # sudoers lacks the rule
])
def test_kill_processes_of_runs_kill_as_the_user(returncode, stderr, killed):
    done = subprocess.CompletedProcess([], returncode, "", stderr)
    with mock.patch("subprocess.run", return_value=done) as run:
        assert processes.kill_processes_of("sbx-1") is killed
    assert run.call_args.args[0] == ["sudo", "-n", "-u", "sbx-1", "/usr/bin/kill", "-9", "-1"]


# --- what a run leaves behind -------------------------------------------------------------------

def test_processes_of_lists_a_users_live_processes_and_not_its_zombies():
    zombie = os.fork()
    if zombie == 0:  # pragma: no cover
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while processes.stat_fields(zombie)[0] != b"Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        found = processes.processes_of(os.getuid())
        assert os.getpid() in found and zombie not in found
        assert os.getpid() not in processes.processes_of(os.getuid() + 12345)
    finally:
        os.waitpid(zombie, 0)


# A process whose main thread exits while another thread runs on.
MAIN_THREAD_EXITS = ("import ctypes, sys, threading, time\n"
                     "threading.Thread(target=time.sleep, args=(30,)).start()\n"
                     "print('ready', flush=True)\n"
                     "ctypes.CDLL(None).pthread_exit(None)\n")


def test_a_process_whose_main_thread_exited_while_a_thread_runs_is_live():
    """/proc/<pid>/stat shows it as a zombie; /proc/<pid>/task/*/stat shows the thread that runs."""
    process = subprocess.Popen([sys.executable, "-c", MAIN_THREAD_EXITS], stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 5
        while processes.stat_fields(process.pid)[0] != b"Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert processes.stat_fields(process.pid)[0] == b"Z"  # what the scan saw, and skipped
        assert process.pid in processes.processes_of(os.getuid())
    finally:
        process.kill()
        process.wait()
    assert process.pid not in processes.processes_of(os.getuid())


def test_a_thread_gone_while_its_process_is_read_is_not_live(monkeypatch):
    """Every thread of the process exited between the listing of /proc/<pid>/task and the read."""
    monkeypatch.setattr(processes, "stat_fields", mock.Mock(side_effect=FileNotFoundError))
    assert processes._has_a_live_thread(os.getpid()) is False
    monkeypatch.setattr(processes.os, "listdir", mock.Mock(side_effect=FileNotFoundError))
    assert processes._has_a_live_thread(os.getpid()) is False


def test_threads_the_app_may_not_read_leave_a_zombie_a_zombie_said_once(monkeypatch, caplog):
    """Under an AppArmor profile without the rules for /proc/<pid>/task: no internal error, one log line."""
    monkeypatch.setattr(processes, "_unreadable_threads_said", [])
    monkeypatch.setattr(processes.os, "listdir", mock.Mock(side_effect=PermissionError(13, "Permission denied")))
    assert processes._has_a_live_thread(os.getpid()) is False
    assert processes._has_a_live_thread(os.getpid()) is False
    assert caplog.text.count("Cannot tell whether a zombie of a sandbox user has a live thread") == 1


def test_the_run_groups_of_a_user_are_its_processes_outside_the_services_session():
    """A process in a session of its own (a run's) counts, by its group; this one (a zygote's session) does not."""
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        groups = processes.run_groups_of(os.getuid())
        assert groups[child.pid] == [child.pid]  # its session's leader: group = session = its pid
        assert not any(os.getpid() in pids for pids in groups.values())
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(("session", "leader_uid", "runs"), [
    ("ours", 4242, False),  # the service's session: its zygotes, whoever leads it
    (0, 4242, False),  # made outside this PID namespace (a container's): never a run's
    (5000, 4242, True),  # led by a process of the slot's user: a run's leader
    (5000, None, True),  # its leader is gone (killed at the time limit): what is left is a run's
    (5000, 999, False),  # led by another service's process: that service's zygotes
])
def test_a_runs_session_is_led_by_the_slots_user_or_by_no_one(monkeypatch, session, leader_uid, runs):
    ours = os.getsid(0)
    session = ours if session == "ours" else session

    def stat(path):
        assert path == f"/proc/{session}"
        if leader_uid is None:
            raise FileNotFoundError(path)
        return mock.Mock(st_uid=leader_uid)

    monkeypatch.setattr(processes.os, "stat", stat)
    assert processes.is_a_runs_session(session, 4242, ours) is runs


def test_kill_groups_runs_kill_as_the_user_on_each_group():
    done = subprocess.CompletedProcess([], 0, "", "")
    with mock.patch("subprocess.run", return_value=done) as run:
        assert processes.kill_groups("sbx-1", {812, 77}) is True
    assert run.call_args.args[0] == ["sudo", "-n", "-u", "sbx-1", "/usr/bin/kill", "-9", "--", "-77", "-812"]


@pytest.fixture
def slot_of_sbx(monkeypatch):
    """A slot's user, ``sbx-1``, with its killing mocked: ``(user, kill_groups, kill_processes_of)``."""
    monkeypatch.setattr(processes, "uid_of", lambda user: 4242)
    monkeypatch.setattr(processes, "LEFTOVER_GRACE_SECONDS", 0.05)
    monkeypatch.setattr(processes, "KILL_GROUPS_SECONDS", 0.05)
    with mock.patch.object(processes, "kill_groups", return_value=True) as kill_groups, \
            mock.patch.object(processes, "kill_processes_of") as kill_all:
        yield "sbx-1", kill_groups, kill_all


def groups_seen(*answers):
    """``run_groups_of`` answering each of ``answers`` in turn, then the last one for ever."""
    answers = list(answers)
    return mock.patch.object(processes, "run_groups_of", side_effect=lambda uid: answers.pop(0) if len(answers) > 1
                             else answers[0])


def test_end_leftovers_finds_nothing_after_a_clean_run(slot_of_sbx):
    user, kill_groups, kill_all = slot_of_sbx
    with groups_seen({}):
        processes.end_leftovers(user)
    kill_groups.assert_not_called()
    kill_all.assert_not_called()


def test_end_leftovers_waits_for_the_runs_last_exits(slot_of_sbx):
    user, kill_groups, kill_all = slot_of_sbx
    with groups_seen({5: [5, 6]}, {5: [6]}, {}):
        processes.end_leftovers(user)
    kill_groups.assert_not_called()
    kill_all.assert_not_called()


def test_end_leftovers_kills_the_groups_that_stay_and_never_every_process(slot_of_sbx):
    """Past the grace, the run's groups (the code's and the reaper's) die; the zygote is in none of them."""
    user, kill_groups, kill_all = slot_of_sbx
    left = {5: [5, 7], 6: [6]}
    with groups_seen(*[left] * 20, {}):
        processes.end_leftovers(user)
    kill_groups.assert_called_with("sbx-1", left)
    kill_all.assert_not_called()


def test_end_run_processes_kills_every_process_when_new_groups_keep_coming(slot_of_sbx):
    """Only where a run can make groups (our layer off): kill(-1) as the user is the last resort."""
    user, kill_groups, kill_all = slot_of_sbx
    new_group = iter(range(100, 10_000))
    with mock.patch.object(processes, "run_groups_of", side_effect=lambda uid: {next(new_group): [1]}), \
            mock.patch.object(processes, "kill_all_processes_of", return_value=True) as kill_all_loop:
        assert processes.end_run_processes(user) is True
    assert kill_groups.call_count >= 1
    kill_all_loop.assert_called_once_with("sbx-1")


def test_end_run_processes_waits_for_killed_processes_that_exit_slowly_and_keeps_the_zygote(slot_of_sbx):
    """Past KILL_GROUPS_SECONDS, a process already killed that is still exiting is no new group."""
    user, kill_groups, kill_all = slot_of_sbx
    with groups_seen(*[{5: [5, 7]}] * 30, {5: [7]}, {}), \
            mock.patch.object(processes, "kill_all_processes_of") as kill_all_loop:
        assert processes.end_run_processes(user) is True
    kill_groups.assert_called_once_with("sbx-1", {5: [5, 7]})
    kill_all_loop.assert_not_called()
    kill_all.assert_not_called()


def test_end_run_processes_gives_up_on_killed_processes_that_never_exit(slot_of_sbx, monkeypatch, caplog):
    user, kill_groups, _ = slot_of_sbx
    monkeypatch.setattr(processes, "EXIT_WAIT_SECONDS", 0.1)
    with groups_seen({5: [5]}), mock.patch.object(processes, "kill_all_processes_of") as kill_all_loop:
        assert processes.end_run_processes(user) is False
    kill_groups.assert_called_once_with("sbx-1", {5: [5]})
    kill_all_loop.assert_not_called()
    assert "are still exiting" in caplog.text


def test_end_run_processes_kills_every_process_when_sudo_refuses_the_group_kill(slot_of_sbx):
    user, kill_groups, _ = slot_of_sbx
    kill_groups.return_value = False  # e.g. a host whose sudoers file predates the rule
    with groups_seen({5: [5]}), mock.patch.object(processes, "kill_all_processes_of", return_value=True) as kill_all:
        processes.end_run_processes(user)
    kill_all.assert_called_once_with("sbx-1")


def test_end_run_processes_with_nothing_left_kills_nothing(slot_of_sbx):
    user, kill_groups, kill_all = slot_of_sbx
    with groups_seen({}):
        assert processes.end_run_processes(user) is True
    kill_groups.assert_not_called()
    kill_all.assert_not_called()


def test_kill_all_processes_of_gives_up_on_processes_that_survive(slot_of_sbx):
    _, _, kill = slot_of_sbx
    with mock.patch.object(processes, "processes_of", return_value=[5]):
        assert processes.kill_all_processes_of("sbx-1", timeout=0.05) is False
    assert kill.call_count >= 1


def test_kill_all_processes_of_ends_once_none_is_left(slot_of_sbx):
    _, _, kill = slot_of_sbx
    with mock.patch.object(processes, "processes_of", side_effect=[[5], []]):
        assert processes.kill_all_processes_of("sbx-1") is True
    kill.assert_called_once_with("sbx-1")


def test_the_master_becomes_a_child_subreaper():
    """In a forked child (the flag is per process): prctl(PR_GET_CHILD_SUBREAPER) reads 1 after."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child reports through the pipe
        processes.become_child_subreaper()
        flag = ctypes.c_int(0)
        ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
        os.write(write, bytes([flag.value]))
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"\x01"
    os.waitpid(pid, 0)


def test_become_child_subreaper_logs_a_refusal(caplog):
    with mock.patch.object(processes, "_libc") as libc:
        libc.return_value.prctl.return_value = -1
        processes.become_child_subreaper()
    assert "Could not become a child subreaper" in caplog.text




@pytest.mark.parametrize("gone", [FileNotFoundError, ProcessLookupError])
def test_processes_of_skips_a_process_gone_while_it_is_read(gone):
    """Reading /proc/<pid>/stat of a process that has just gone fails with ENOENT or ESRCH."""
    me = os.getpid()
    real = processes.stat_fields

    def stat_fields(pid, thread=None):  # a zombie on the host has its threads read too
        if int(pid) == me:
            raise gone(f"/proc/{pid}/stat")
        return real(pid, thread)

    with mock.patch.object(processes, "stat_fields", side_effect=stat_fields):
        assert me not in processes.processes_of(os.getuid())
    assert me in processes.processes_of(os.getuid())


def test_watch_without_a_time_limit_starts_nothing():
    with mock.patch.object(processes, "ProcessKillerThread") as killer:
        processes.Watch(mock.Mock(), None, backstop_user="sbx-1").stop()
    killer.assert_not_called()


def test_watch_starts_codejails_killer_and_a_backstop_only_for_a_pool_slot():
    process = mock.Mock()
    with mock.patch.object(processes, "ProcessKillerThread") as killer, \
            mock.patch.object(processes.threading, "Timer") as timer:
        processes.Watch(process, 3, backstop_user=None).stop()
        timer.assert_not_called()
        processes.Watch(process, 3, backstop_user="sbx-1").stop()
    assert killer.call_args_list == [mock.call(process, limit=3)] * 2
    timer.assert_called_once_with(3 + processes.BACKSTOP_SECONDS, processes.end_run_processes, ("sbx-1",))
    timer.return_value.join.assert_called_once_with()
