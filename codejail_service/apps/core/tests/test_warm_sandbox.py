"""
The warm sandbox's app side, against a stand-in zygote that speaks the protocol of
codejail_service/confinement/zygote.py (the real zygote runs in the live suite: make test-live).
"""

import json
import os
import socket
import subprocess
import threading
from unittest import mock

import pytest

from codejail_service.apps.core import sandbox_pool, sandbox_runner, warm_sandbox

PYTHON_BIN = "/venv/bin/python"


@pytest.fixture
def warm(settings, tmp_path):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 2
    settings.CODEJAIL_SLOT_DIR = str(tmp_path / "slots")
    settings.CODEJAIL_WARM_SANDBOX = True
    settings.CODEJAIL_ZYGOTE_SCRIPT = "/venv/lib/python3.11/site-packages/codejail_confinement/zygote.py"
    settings.CODE_JAIL = {**settings.CODE_JAIL, "user": "sbx", "python_bin": PYTHON_BIN}
    # No such user here: what a run leaves behind is sandbox_pool's (test_sandbox_pool.py).
    with sandbox_pool.acquire(1) as slot, mock.patch.object(sandbox_pool, "end_leftovers") as end:
        slot.end_leftovers = end
        yield slot


class FakeZygote(threading.Thread):
    """Listens where the slot's zygote would; serves one run per connection as the protocol says."""

    def __init__(self, user, replies=None, status=3, path=None):
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path or warm_sandbox.socket_path(user))
        self.listener.listen(1)
        self.replies = replies
        self.status = status
        self.requests = []
        self.stdin_seen = []

    def run(self):
        conn, _ = self.listener.accept()
        with conn:
            message, fds, _, _ = socket.recv_fds(conn, 4096, 3)
            if not message:  # a probe (start_all)
                self.requests.append(None)
                return
            self.requests.append(json.loads(message))
            if self.replies is not None:
                for reply in self.replies:
                    conn.send(reply)
                for fd in fds:
                    os.close(fd)
                if not self.replies:  # gone: as a zygote that exits, it takes no more connections
                    self.listener.close()
                return
            stdin, stdout, stderr = (os.fdopen(fd, mode, buffering=0)
                                     for fd, mode in zip(fds, ("rb", "wb", "wb"), strict=True))
            conn.send(json.dumps({"pid": 4242, "zygote": 4000}).encode())
            self.stdin_seen.append(stdin.read())
            stdout.write(b"out")
            stderr.write(b"err")
            for pipe in (stdin, stdout, stderr):
                pipe.close()
            conn.send(json.dumps({"status": self.status}).encode())

    def stop(self):
        self.listener.close()
        self.join(5)


def test_a_run_is_forked_by_the_slots_zygote_with_its_pipes_rlimits_and_status(warm):
    zygote = FakeZygote(warm.user)
    zygote.start()
    process = warm_sandbox.run(warm, "/tmp/codejail-x", [(6, (15, 15))])
    assert process.pid == 4242
    process.stdin.write(b"globals")
    process.stdin.close()
    assert (process.stdout.read(), process.stderr.read()) == (b"out", b"err")
    assert process.wait() == 3
    zygote.stop()
    assert zygote.requests == [{"cwd": "/tmp/codejail-x", "rlimits": [[6, 15, 15]], "max_runs": 1000,
                                "max_seconds": 600}]
    assert zygote.stdin_seen == [b"globals"]


def test_run_subprocess_hands_codejails_sandbox_run_to_the_zygote(warm, settings):
    zygote = FakeZygote(warm.user, status=0)
    zygote.start()
    cmd = ["sudo", "-u", "sbx", "TMPDIR=tmp", PYTHON_BIN, "-E", "-B", "jailed_code"]
    with mock.patch("subprocess.Popen") as popen:
        result = sandbox_runner.run_subprocess(cmd, stdin=b"[1]", cwd="/tmp/codejail-y", rlimits=[], realtime=2)
    popen.assert_not_called()
    zygote.stop()
    assert result == (0, b"out", b"err")
    assert zygote.stdin_seen == [b"[1]"]
    warm.end_leftovers.assert_called_once_with(warm, killed=False, keep={4000})


def test_without_the_setting_runs_stay_fresh_interpreters(warm, settings):
    settings.CODEJAIL_WARM_SANDBOX = False
    assert not warm_sandbox.enabled()
    cmd = ["sudo", "-u", "sbx", "TMPDIR=tmp", PYTHON_BIN, "-E", "-B", "jailed_code"]
    real_popen = subprocess.Popen
    # A unit test runs no host program but a stand-in: the fresh interpreter's spawn is the point.
    with mock.patch.object(warm_sandbox, "run") as run, \
            mock.patch.object(sandbox_runner.subprocess, "Popen",
                              side_effect=lambda argv, **kw: real_popen(["/bin/echo", "hi"], **kw)) as popen:
        assert sandbox_runner.run_subprocess(cmd, cwd="/") == (0, b"hi\n", b"")
    run.assert_not_called()
    assert popen.call_args.args[0] == ["sudo", "-u", warm.user, *cmd[3:]]  # the slot's user


def test_only_codejails_sandbox_run_goes_to_the_zygote(warm):
    assert warm_sandbox.is_sandbox_run(["sudo", "-u", "sbx-1", "TMPDIR=tmp", PYTHON_BIN, "-E", "-B", "jailed_code"])
    assert not warm_sandbox.is_sandbox_run(["sudo", "-u", "sbx-1", "/usr/bin/find", "tmp"])
    assert not warm_sandbox.is_sandbox_run(["sudo", "-u", "sbx-1", "/other/python", "-E", "-B", "jailed_code"])


def test_a_zygote_that_does_not_fork_the_run_is_an_error(warm):
    zygote = FakeZygote(warm.user, replies=[b'{"error": "expected 3 descriptors"}'])
    zygote.start()
    with pytest.raises(warm_sandbox.ZygoteError, match="did not fork the run"):
        warm_sandbox.run(warm, "/tmp/codejail-z", [])
    zygote.stop()


def test_a_zygote_gone_before_the_fork_is_replaced_once(warm):
    """E.g. it exited idle just as the run connected: the run goes to a new zygote."""
    gone = FakeZygote(warm.user, replies=[])
    gone.start()
    replacements = []

    def start(user):
        gone.join(5)
        os.unlink(warm_sandbox.socket_path(user))
        replacements.append(FakeZygote(user, status=0))
        replacements[-1].start()

    with mock.patch.object(warm_sandbox, "start_zygote", side_effect=start):
        process = warm_sandbox.run(warm, "/tmp/codejail-z", [])
        process.stdin.close()
        assert process.wait() == 0
    replacements[0].stop()
    assert len(replacements) == 1


def test_a_zygote_gone_twice_is_an_error(warm):
    zygotes = [FakeZygote(warm.user, replies=[])]
    zygotes[0].start()

    def start(user):
        zygotes[-1].join(5)
        os.unlink(warm_sandbox.socket_path(user))
        zygotes.append(FakeZygote(user, replies=[]))
        zygotes[-1].start()

    with mock.patch.object(warm_sandbox, "start_zygote", side_effect=start), \
            pytest.raises(warm_sandbox.ZygoteGone):
        warm_sandbox.run(warm, "/tmp/codejail-z", [])
    zygotes[-1].stop()


def test_a_silent_zygote_times_out(warm, monkeypatch):
    monkeypatch.setattr(warm_sandbox, "FORK_TIMEOUT_SECONDS", 0.1)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(warm_sandbox.socket_path(warm.user))
    listener.listen(1)  # accepts into the backlog, never answers: a zygote still importing, or stuck
    with pytest.raises(warm_sandbox.ZygoteError, match="did not fork the run: None"):
        warm_sandbox.run(warm, "/tmp/codejail-z", [])
    listener.close()


def test_no_zygote_yet_starts_one_then_runs(warm):
    zygotes = []

    def start(user):
        zygotes.append(FakeZygote(user, status=0))
        zygotes[-1].start()

    with mock.patch.object(warm_sandbox, "start_zygote", side_effect=start) as start_zygote:
        process = warm_sandbox.run(warm, "/tmp/codejail-w", [])
    start_zygote.assert_called_once_with(warm.user)
    process.stdin.close()
    assert process.wait() == 0
    zygotes[0].stop()


def test_start_zygote_runs_the_pinned_command_with_its_socket_as_stdin(warm, settings):
    settings.CODEJAIL_ZYGOTE_PYTHON = None  # then CODE_JAIL's python_bin
    with mock.patch("subprocess.Popen") as popen:
        popen.return_value.pid = 99
        popen.return_value.poll.return_value = None
        warm_sandbox.start_zygote(warm.user)
    args, kwargs = popen.call_args
    assert args[0] == ["sudo", "-n", "-u", warm.user, PYTHON_BIN, "-E", "-B", "-S", settings.CODEJAIL_ZYGOTE_SCRIPT]
    assert kwargs["stdin"].family == socket.AF_UNIX and kwargs["stdout"] == subprocess.DEVNULL
    assert os.path.exists(warm_sandbox.socket_path(warm.user))
    popen.return_value.wait.assert_called_once_with(warm_sandbox.FORK_TIMEOUT_SECONDS)  # its first process


def test_a_zygote_slow_to_leave_its_first_process_is_said(warm, caplog):
    with mock.patch("subprocess.Popen") as popen:
        popen.return_value.wait.side_effect = subprocess.TimeoutExpired("sudo", 30)
        warm_sandbox.start_zygote(warm.user)
    assert "did not leave its first process" in caplog.text


def test_the_master_stops_the_zygotes_with_the_service(warm, settings):
    import importlib
    import sys

    sys.modules.pop("codejail_service.gunicorn_config", None)
    gunicorn_config = importlib.import_module("codejail_service.gunicorn_config")
    with mock.patch.object(sandbox_pool, "kill_processes_of") as kill:
        gunicorn_config.on_exit(mock.Mock())  # slot 1 is held (the fixture): not its processes
        settings.CODEJAIL_WARM_SANDBOX = False
        gunicorn_config.on_exit(mock.Mock())
    assert [call.args for call in kill.call_args_list] == [("sbx-0",)]


class FakeSuccessor:
    """What ``start_zygote`` returns for a successor: a process whose stdout says ``ready`` (or not)."""

    def __init__(self, user, path, line=b"ready\n"):
        self.zygote = FakeZygote(user, status=0, path=path)
        self.zygote.start()
        read_end, write_end = os.pipe()
        os.write(write_end, line)
        os.close(write_end)
        self.stdout = os.fdopen(read_end, "rb")
        self.pid = 77


def test_a_zygote_that_asks_for_a_successor_gets_one_in_the_background(warm):
    """
    The successor listens on <user>.sock.next until ready; then takes <user>.sock and the
    predecessor is told to retire (one message, no descriptors).
    """
    old = FakeZygote(warm.user, replies=[json.dumps({"pid": 5, "retire": True}).encode(),
                                         json.dumps({"status": 0}).encode()])
    old.start()
    successors = []

    def start(user, path=None, stdout=None):
        assert path == warm_sandbox.socket_path(user) + ".next" and stdout == subprocess.PIPE
        successors.append(FakeSuccessor(user, path))
        return successors[-1]

    with mock.patch.object(warm_sandbox, "start_zygote", side_effect=start):
        process = warm_sandbox.run(warm, "/tmp/codejail-r", [])
        assert process.wait() == 0
        for thread in threading.enumerate():
            if thread.name.startswith("zygote-successor-"):
                thread.join(5)
    assert len(successors) == 1
    # The predecessor got the retire message on a connection of its own.
    conn, _ = old.listener.accept()
    assert conn.recv(4096) == json.dumps({"retire": True}).encode()
    conn.close()
    old.stop()
    # The next run reaches the successor.
    process = warm_sandbox.run(warm, "/tmp/codejail-s", [])
    process.stdin.close()
    assert process.wait() == 0
    assert successors[0].zygote.requests[0]["cwd"] == "/tmp/codejail-s"
    successors[0].zygote.stop()
    assert warm.user not in warm_sandbox._replacing


def test_a_successor_that_is_not_ready_leaves_its_predecessor_in_place(warm, caplog):
    old = FakeZygote(warm.user, status=0)
    old.start()
    successors = []

    def start(user, path=None, stdout=None):
        successors.append(FakeSuccessor(user, path, line=b""))  # it died while preloading
        return successors[-1]

    with mock.patch.object(warm_sandbox, "start_zygote", side_effect=start):
        warm_sandbox._replace(warm.user)
    assert "Could not replace the warm sandbox zygote" in caplog.text
    assert not os.path.exists(warm_sandbox.socket_path(warm.user) + ".next")
    process = warm_sandbox.run(warm, "/tmp/codejail-t", [])
    process.stdin.close()
    assert process.wait() == 0 and old.requests[0]["cwd"] == "/tmp/codejail-t"
    old.stop()
    successors[0].zygote.stop()


def test_one_replacement_per_slot_at_a_time_service_wide(warm):
    import fcntl

    lock_path = os.path.join(sandbox_pool.slot_dir(), f"{warm.user}.successor.lock")
    with open(lock_path, "a") as other_worker:
        fcntl.flock(other_worker, fcntl.LOCK_EX)
        with mock.patch.object(warm_sandbox, "start_zygote") as start_zygote:
            warm_sandbox._replace(warm.user)
    start_zygote.assert_not_called()


def test_a_process_starts_one_replacement_thread_per_user(warm):
    with mock.patch.object(warm_sandbox, "_replace") as replace, mock.patch("threading.Thread") as thread:
        warm_sandbox._replacing.add(warm.user)
        try:
            warm_sandbox.replace(warm.user)
        finally:
            warm_sandbox._replacing.discard(warm.user)
        warm_sandbox.replace(warm.user)
    assert thread.call_count == 1 and thread.call_args.kwargs["args"] == (warm.user,)
    replace.assert_not_called()  # (the thread is a mock)
    warm_sandbox._replacing.discard(warm.user)


def test_a_run_queued_on_a_zygote_that_exits_goes_to_its_successor(warm):
    """Retired (or past its lifetime) with our run queued: the connection is reset; run again."""
    old = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old.bind(warm_sandbox.socket_path(warm.user))
    old.listen(8)
    successor = []

    def receive(self, timeout):
        # The first answer: the old zygote exits without taking the run; its successor is in place.
        if not successor:
            old.close()
            os.unlink(warm_sandbox.socket_path(warm.user))
            successor.append(FakeZygote(warm.user, status=0))
            successor[0].start()
        return original(self, timeout)

    original = warm_sandbox.WarmRun.receive
    with mock.patch.object(warm_sandbox.WarmRun, "receive", receive), \
            mock.patch.object(warm_sandbox, "start_zygote") as start_zygote:
        process = warm_sandbox.run(warm, "/tmp/codejail-u", [])
    start_zygote.assert_not_called()
    process.stdin.close()
    assert process.wait() == 0
    successor[0].stop()


def test_start_all_starts_a_zygote_for_each_free_slot_without_one(warm, settings):
    # Slot 1 is held (the fixture); slot 0 has a zygote already (it is not replaced).
    there = FakeZygote(sandbox_pool.pool_users()[0])
    there.start()
    with mock.patch.object(warm_sandbox, "start_zygote") as start_zygote, \
            mock.patch.object(warm_sandbox.gunicorn_config, "become_child_subreaper") as subreaper:
        warm_sandbox.start_all()
    start_zygote.assert_not_called()
    subreaper.assert_called_once_with()
    there.join(5)
    assert there.requests == [None]
    there.listener.close()
    with mock.patch.object(warm_sandbox, "start_zygote") as start_zygote, \
            mock.patch.object(warm_sandbox.gunicorn_config, "become_child_subreaper"):
        warm_sandbox.start_all()
    start_zygote.assert_called_once_with(sandbox_pool.pool_users()[0])
    there.join(5)


def test_the_zygote_starts_as_its_own_python_where_one_is_named(warm, settings):
    settings.CODEJAIL_ZYGOTE_PYTHON = "/venv/bin/python-zygote"
    with mock.patch("subprocess.Popen") as popen:
        popen.return_value.pid = 98
        warm_sandbox.start_zygote(warm.user)
    assert popen.call_args[0][0][4] == "/venv/bin/python-zygote"


def test_without_a_zygote_script_runs_stay_fresh_interpreters(warm, settings):
    settings.CODEJAIL_ZYGOTE_SCRIPT = None
    assert not warm_sandbox.enabled()


def test_a_successor_takes_the_slot_even_if_its_predecessor_is_gone(warm):
    successors = []

    def start(user, path=None, stdout=None):
        successors.append(FakeSuccessor(user, path))
        return successors[-1]

    with mock.patch.object(warm_sandbox, "start_zygote", side_effect=start):
        warm_sandbox._replace(warm.user)  # no zygote listens at <user>.sock: nothing to retire
    process = warm_sandbox.run(warm, "/tmp/codejail-v", [])
    process.stdin.close()
    assert process.wait() == 0 and successors[0].zygote.requests[0]["cwd"] == "/tmp/codejail-v"
    successors[0].zygote.stop()


def test_a_zygote_that_resets_the_connection_as_the_run_is_sent_is_gone(warm):
    zygote = FakeZygote(warm.user, status=0)
    zygote.start()
    with mock.patch.object(warm_sandbox.socket, "send_fds", side_effect=ConnectionResetError), \
            pytest.raises(warm_sandbox.ZygoteGone):
        warm_sandbox._run(warm, "/tmp/codejail-w", [])
    zygote.stop()


def test_a_reset_connection_mid_run_is_a_zygote_gone(warm):
    conn = mock.Mock()
    conn.recv.side_effect = ConnectionResetError
    read_ends = [os.pipe() for _ in range(3)]
    run = warm_sandbox.WarmRun(conn, read_ends[0][1], read_ends[1][0], read_ends[2][0])
    with mock.patch.object(warm_sandbox.select, "select"), pytest.raises(warm_sandbox.ZygoteGone):
        run.receive(0)
    run.close()
    for pair in read_ends:
        for fd in pair:
            try:
                os.close(fd)
            except OSError:
                pass


def test_the_zygotes_of_a_slot_are_its_zygote_command_lines_in_the_services_session(warm, monkeypatch):
    run = warm_sandbox.WarmRun(mock.Mock(), *[os.open(os.devnull, os.O_RDWR) for _ in range(3)], uid=4242)
    run.zygote_pid = 10
    monkeypatch.setattr(sandbox_pool, "processes_of", lambda uid: [10, 11, 12, 13])
    monkeypatch.setattr(warm_sandbox, "_is_zygote_cmdline", lambda pid: pid != 13)  # 13: something else
    ours = os.getsid(0)
    monkeypatch.setattr(warm_sandbox, "_session", lambda pid: {10: ours, 11: ours, 12: ours + 1, 13: ours}[pid])
    assert run.zygote_pids == {10, 11}  # 11: a successor; 12: a run (a session of its own)
    run.close()


def test_a_process_session_and_command_line_from_proc():
    assert warm_sandbox._session(os.getpid()) == os.getsid(0) and warm_sandbox._session(-1) is None
    assert not warm_sandbox._is_zygote_cmdline(os.getpid()) and not warm_sandbox._is_zygote_cmdline(-1)


def test_a_run_the_zygote_cannot_fork_runs_in_a_fresh_interpreter(warm):
    cmd = ["sudo", "-u", "sbx", "TMPDIR=tmp", PYTHON_BIN, "-E", "-B", "jailed_code"]
    fresh = subprocess.Popen(["/bin/echo", "-n", "fresh"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    with mock.patch.object(warm_sandbox, "run", side_effect=warm_sandbox.ZygoteGone("gone")), \
            mock.patch("subprocess.Popen", return_value=fresh) as popen:
        result = sandbox_runner.run_subprocess(cmd, stdin=b"", cwd="/tmp/codejail-f", rlimits=[])
    assert popen.call_args.args[0][-4:] == [PYTHON_BIN, "-E", "-B", "jailed_code"]
    assert result == (0, b"fresh", b"")
