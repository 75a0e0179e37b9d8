"""The sandbox users' processes: /proc, every way the app kills them, the master as a subreaper."""

import ctypes
import os
import subprocess
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


@pytest.fixture
def slot_of_sbx():
    """A slot's user, ``sbx-1``, with its killing mocked."""
    with mock.patch.object(processes, "uid_of", return_value=4242), \
            mock.patch.object(processes, "kill_processes_of") as kill:
        yield "sbx-1", kill


def test_end_leftovers_finds_nothing_after_a_clean_run(slot_of_sbx):
    user, kill = slot_of_sbx
    with mock.patch.object(processes, "processes_of", return_value=[77]):
        processes.end_leftovers(user, killed=False, keep=[77])  # the zygote stays
    kill.assert_not_called()


def test_end_leftovers_waits_for_the_runs_last_exits(slot_of_sbx):
    user, kill = slot_of_sbx
    with mock.patch.object(processes, "processes_of", side_effect=[[5, 77], [5, 77], [77]]):
        processes.end_leftovers(user, killed=False, keep=[77])
    kill.assert_not_called()


def test_end_leftovers_kills_them_all_at_once_after_a_killed_run(slot_of_sbx):
    user, kill = slot_of_sbx
    with mock.patch.object(processes, "processes_of", side_effect=[[5, 77], [5, 77], []]):
        processes.end_leftovers(user, killed=True, keep=[77])
    kill.assert_called_once_with("sbx-1")


def test_end_leftovers_kills_them_all_when_they_stay(slot_of_sbx, monkeypatch):
    user, kill = slot_of_sbx
    monkeypatch.setattr(processes, "LEFTOVER_GRACE_SECONDS", 0.05)
    left = iter([[5]] * 50 + [[]])
    with mock.patch.object(processes, "processes_of", side_effect=lambda uid: next(left)):
        processes.end_leftovers(user, killed=False)
    assert kill.call_count >= 1


def test_kill_all_processes_of_gives_up_on_processes_that_survive(slot_of_sbx):
    _, kill = slot_of_sbx
    with mock.patch.object(processes, "processes_of", return_value=[5]):
        assert processes.kill_all_processes_of("sbx-1", timeout=0.05) is False
    assert kill.call_count >= 1




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




def test_end_leftovers_keeps_every_zygote_named(slot_of_sbx):
    """A zygote and its successor (zygote_client.replace) both stay; anything else is a leftover."""
    user, kill = slot_of_sbx
    with mock.patch.object(processes, "processes_of", return_value=[77, 78]):
        processes.end_leftovers(user, killed=False, keep={77, 78})
    kill.assert_not_called()


@pytest.mark.parametrize("gone", [FileNotFoundError, ProcessLookupError])
def test_processes_of_skips_a_process_gone_while_it_is_read(gone):
    """Reading /proc/<pid>/stat of a process that has just gone fails with ENOENT or ESRCH."""
    me = os.getpid()
    real = processes.stat_fields

    def stat_fields(pid):
        if int(pid) == me:
            raise gone(f"/proc/{pid}/stat")
        return real(pid)

    with mock.patch.object(processes, "stat_fields", side_effect=stat_fields):
        assert me not in processes.processes_of(os.getuid())
    assert me in processes.processes_of(os.getuid())


def test_session_of_a_process_gone_is_none():
    assert processes.session_of(os.getpid()) == os.getsid(0)
    with mock.patch.object(processes, "stat_fields", side_effect=FileNotFoundError):
        assert processes.session_of(1) is None


def test_command_line_ends_with_reads_proc_and_a_gone_process_ends_with_nothing():
    assert processes.command_line_ends_with(os.getpid(), b"") is True
    with mock.patch("builtins.open", side_effect=FileNotFoundError):
        assert processes.command_line_ends_with(os.getpid(), b"") is False


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
    timer.assert_called_once_with(3 + processes.BACKSTOP_SECONDS, processes.kill_all_processes_of, ("sbx-1",))
    timer.return_value.join.assert_called_once_with()
