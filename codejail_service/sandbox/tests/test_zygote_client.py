"""
The warm sandbox's app side, against a stand-in zygote that speaks the protocol of
codejail_service/confinement/zygote.py (the real zygote runs in the live suite: make test-live).
"""

import importlib.util
import json
import os
import socket
import subprocess
import threading
import time
from unittest import mock

import pytest

from codejail_service.sandbox import lifecycle, pool, processes, runner, zygote_client
from codejail_service.sandbox.run import WARM, Run

PYTHON_BIN = "/venv/bin/python"


@pytest.fixture
def warm(settings, tmp_path):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 2
    settings.CODEJAIL_SLOT_DIR = str(tmp_path / "slots")
    settings.CODEJAIL_WARM_SANDBOX = True
    settings.CODEJAIL_ZYGOTE_SCRIPT = "/venv/lib/python3.11/site-packages/codejail_confinement/zygote.py"
    settings.CODE_JAIL = {**settings.CODE_JAIL, "user": "sbx", "python_bin": PYTHON_BIN}
    # No such user here: what a run leaves behind is processes.py's (test_processes.py).
    with pool.acquire(1) as slot, mock.patch.object(processes, "end_leftovers") as end:
        slot.end_leftovers = end
        yield slot


def run_program(slot, cmd, stdin=None, cwd=None, rlimits=(), realtime=None):
    """The runner's ``run_program`` for a warm run in ``slot``."""
    run = Run(slot, WARM)
    run.rlimits, run.realtime = tuple(rlimits), realtime
    result = runner.run_program(run, cmd, stdin=stdin, cwd=cwd)
    run.ending()  # after the answer, as the slot is released (Run.release)
    return result


class FakeZygote(threading.Thread):
    """Listens where the slot's zygote would; serves one run per connection as the protocol says."""

    def __init__(self, user, replies=None, status=3, path=None):
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path or zygote_client.socket_path(user))
        self.listener.listen(1)
        self.replies = replies
        self.status = status
        self.requests = []
        self.stdin_seen = []

    def run(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:  # stopped before any connection came (the test's client gave up first)
            return
        with conn:
            message, fds, _, _ = socket.recv_fds(conn, 4096, 3)
            if not message:  # a probe (start_all)
                self.requests.append(None)
                return
            self.requests.append(json.loads(message))
            if self.requests[-1] == {"retire": True}:  # its successor is in place
                return
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
            conn.send(json.dumps({"status": self.status, "counts": {"cpu-ms": 1.0}, "ended": True}).encode())

    def stop(self):
        self.listener.close()
        self.join(5)


def test_a_run_is_forked_by_the_slots_zygote_with_its_pipes_rlimits_and_status(warm):
    zygote = FakeZygote(warm.user)
    zygote.start()
    process = zygote_client.run(warm.user, "/tmp/codejail-x", [(6, (15, 15))], uses=["numpy"])
    assert process.pid == 4242
    process.stdin.write(b"globals")
    process.stdin.close()
    assert (process.stdout.read(), process.stderr.read()) == (b"out", b"err")
    assert process.wait() == 3
    zygote.stop()
    assert zygote.requests == [{"cwd": "/tmp/codejail-x", "rlimits": [[6, 15, 15]], "max_runs": 1000,
                                "max_seconds": 600, "light": False, "uses": ["numpy"]}]
    assert zygote.stdin_seen == [b"globals"]


def test_a_warm_run_is_handed_to_the_zygote(warm, settings):
    zygote = FakeZygote(warm.user, status=0)
    zygote.start()
    cmd = ["sudo", "-u", "sbx-1", "TMPDIR=tmp", PYTHON_BIN, "-E", "-B", "jailed_code"]
    with mock.patch("subprocess.Popen") as popen:
        result = run_program(warm, cmd, stdin=b"[1]", cwd="/tmp/codejail-y", realtime=2)
    popen.assert_not_called()
    zygote.stop()
    assert result == (0, b"out", b"err")
    assert zygote.stdin_seen == [b"[1]"]
    warm.end_leftovers.assert_called_once_with("sbx-1")


def warm_run():
    """A WarmRun on a socket pair (the zygote's end second) and pipes nobody writes to."""
    app, zygote = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ends = [os.pipe() for _ in range(3)]
    for _, write_end in ends:
        os.close(write_end)
    return zygote_client.WarmRun(app, *(read_end for read_end, _ in ends)), zygote


def test_a_warm_runs_status_comes_before_its_end_which_finish_waits_for():
    warm, zygote = warm_run()
    zygote.send(json.dumps({"status": 4}).encode())
    assert warm.wait() == 4 and not warm.ended
    zygote.send(json.dumps({"status": 4, "counts": {"cpu-ms": 2.5}, "ended": True}).encode())
    assert warm.finish() is True
    assert warm.returncode == 4 and warm.counts == {"cpu-ms": 2.5} and warm.stdout.closed
    zygote.close()


def test_a_warm_run_whose_zygote_goes_or_is_slow_is_finished_without_its_end():
    # The twin of the one above: what is left is the app's to end (processes.end_leftovers).
    for gone in (True, False):
        warm, zygote = warm_run()
        zygote.send(json.dumps({"status": 0}).encode())
        assert warm.wait() == 0
        if gone:
            zygote.close()
        started = time.monotonic()
        assert warm.finish(timeout=0.2) is False
        assert time.monotonic() - started < (0.1 if gone else 1.0)
        assert warm.stdout.closed and warm.counts == {}
        zygote.close()


@pytest.mark.parametrize("setting", ["CODEJAIL_WARM_SANDBOX", "CODEJAIL_ZYGOTE_SCRIPT", "CODEJAIL_SANDBOX_POOL_SIZE"])
def test_without_the_warm_sandbox_or_what_it_takes_runs_are_fresh_interpreters(warm, settings, setting):
    assert Run.in_slot(warm).mode == WARM
    setattr(settings, setting, type(getattr(settings, setting))() or None)
    assert Run.in_slot(warm).mode == "fresh"
    with mock.patch.object(zygote_client, "run") as run:
        runner.run_program(Run.in_slot(warm), ["/bin/echo", "hi"], cwd="/")
    run.assert_not_called()


def test_a_zygote_that_does_not_fork_the_run_is_an_error(warm):
    zygote = FakeZygote(warm.user, replies=[b'{"error": "expected 3 descriptors"}'])
    zygote.start()
    with pytest.raises(zygote_client.ZygoteError, match="did not fork the run"):
        zygote_client.run(warm.user, "/tmp/codejail-z", [])
    zygote.stop()


def test_a_zygote_gone_before_the_fork_with_no_successor_is_not_waited_for(warm):
    """E.g. it died just as the run connected: a new one preloads in the background; the run is not held."""
    gone = FakeZygote(warm.user, replies=[])
    gone.start()
    with mock.patch.object(zygote_client, "replace") as replace, pytest.raises(zygote_client.ZygoteNotReady):
        zygote_client.run(warm.user, "/tmp/codejail-z", [])
    replace.assert_called_once_with(warm.user)
    gone.stop()


def test_a_zygote_that_drops_every_connection_is_an_error_and_replaced(warm):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(zygote_client.socket_path(warm.user))
    listener.listen(2)

    def drop_two():
        for _ in range(2):
            conn, _ = listener.accept()
            socket.recv_fds(conn, 4096, 3)
            conn.close()

    dropper = threading.Thread(target=drop_two, daemon=True)
    dropper.start()
    with mock.patch.object(zygote_client, "replace") as replace, pytest.raises(zygote_client.ZygoteGone):
        zygote_client.run(warm.user, "/tmp/codejail-z", [])
    replace.assert_called_once_with(warm.user)
    dropper.join(5)
    listener.close()


def test_a_silent_zygote_times_out(warm, monkeypatch):
    monkeypatch.setattr(zygote_client, "FORK_TIMEOUT_SECONDS", 0.1)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(zygote_client.socket_path(warm.user))
    listener.listen(1)  # accepts into the backlog, never answers: a zygote still importing, or stuck
    with pytest.raises(zygote_client.ZygoteError, match="did not fork the run: None"):
        zygote_client.run(warm.user, "/tmp/codejail-z", [])
    listener.close()


@pytest.mark.parametrize("socket_left", [False, True], ids=["none-yet", "dead"])
def test_no_zygote_ready_starts_one_in_the_background_and_the_run_does_not_wait(warm, socket_left):
    """None yet, or one that died (its socket is left, refusing): nothing of the run starts there."""
    if socket_left:
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        dead.bind(zygote_client.socket_path(warm.user))
        dead.close()
    with mock.patch.object(zygote_client, "replace") as replace, \
            mock.patch.object(zygote_client, "start_zygote") as start_zygote, \
            pytest.raises(zygote_client.ZygoteNotReady):
        zygote_client.run(warm.user, "/tmp/codejail-w", [])
    replace.assert_called_once_with(warm.user)
    start_zygote.assert_not_called()  # not on the run's path


def test_a_run_in_a_slot_without_a_zygote_ready_runs_at_once_in_a_fresh_interpreter(warm, caplog):
    """The runner's side: the fresh command, while the successor preloads (here: a thread that waits)."""
    caplog.set_level("INFO")
    preloading = threading.Event()
    successors = []

    def start(user, path=None, stdout=None):
        preloading.wait(5)  # the successor's preload, until the fresh run has answered
        successors.append(FakeSuccessor(user, path))
        return successors[-1]

    cmd = ["sudo", "-u", "sbx-1", "TMPDIR=tmp", PYTHON_BIN, "-E", "-B", "jailed_code"]
    fresh = subprocess.Popen(["/bin/echo", "-n", "fresh"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    with mock.patch.object(zygote_client, "start_zygote", side_effect=start), \
            mock.patch("subprocess.Popen", return_value=fresh) as popen:
        result = run_program(warm, cmd, stdin=b"", cwd="/tmp/codejail-f")
        assert result == (0, b"fresh", b"") and popen.call_args.args[0] == cmd
        assert "No warm sandbox of sbx-1 is ready" in caplog.text
        preloading.set()
        _join_replacements()
    # Once ready, the successor serves the slot's next run.
    process = zygote_client.run(warm.user, "/tmp/codejail-g", [])
    process.stdin.close()
    assert process.wait() == 0 and successors[0].zygote.requests[0]["cwd"] == "/tmp/codejail-g"
    successors[0].zygote.stop()


def _join_replacements():
    for thread in threading.enumerate():
        if thread.name.startswith("zygote-successor-"):
            thread.join(5)


def test_start_zygote_runs_the_pinned_command_with_its_socket_as_stdin(warm, settings):
    settings.CODEJAIL_ZYGOTE_PYTHON = None  # then CODE_JAIL's python_bin
    with mock.patch("subprocess.Popen") as popen:
        popen.return_value.pid = 99
        popen.return_value.poll.return_value = None
        zygote_client.start_zygote(warm.user)
    args, kwargs = popen.call_args
    assert args[0] == ["sudo", "-n", "-u", warm.user, PYTHON_BIN, "-E", "-B", "-S", settings.CODEJAIL_ZYGOTE_SCRIPT]
    assert kwargs["stdin"].family == socket.AF_UNIX and kwargs["stdout"] == subprocess.DEVNULL
    assert os.path.exists(zygote_client.socket_path(warm.user))
    popen.return_value.wait.assert_called_once_with(zygote_client.FORK_TIMEOUT_SECONDS)  # its first process


def test_a_zygote_slow_to_leave_its_first_process_is_said(warm, caplog):
    with mock.patch("subprocess.Popen") as popen:
        popen.return_value.wait.side_effect = subprocess.TimeoutExpired("sudo", 30)
        zygote_client.start_zygote(warm.user)
    assert "did not leave its first process" in caplog.text


def test_the_master_stops_the_zygotes_with_the_service(warm, settings):
    import importlib
    import sys

    sys.modules.pop("codejail_service.gunicorn_config", None)
    gunicorn_config = importlib.import_module("codejail_service.gunicorn_config")
    with mock.patch.object(processes, "kill_processes_of") as kill:
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
        assert path == zygote_client.socket_path(user) + ".next" and stdout == subprocess.PIPE
        successors.append(FakeSuccessor(user, path))
        return successors[-1]

    with mock.patch.object(zygote_client, "start_zygote", side_effect=start):
        process = zygote_client.run(warm.user, "/tmp/codejail-r", [])
        assert process.wait() == 0
        _join_replacements()
    assert len(successors) == 1
    # The predecessor got the retire message on a connection of its own.
    conn, _ = old.listener.accept()
    assert conn.recv(4096) == json.dumps({"retire": True}).encode()
    conn.close()
    old.stop()
    # The next run reaches the successor.
    process = zygote_client.run(warm.user, "/tmp/codejail-s", [])
    process.stdin.close()
    assert process.wait() == 0
    assert successors[0].zygote.requests[0]["cwd"] == "/tmp/codejail-s"
    successors[0].zygote.stop()
    assert warm.user not in zygote_client._replacing


def test_a_successor_that_is_not_ready_leaves_its_predecessor_in_place(warm, caplog):
    old = FakeZygote(warm.user, status=0)
    old.start()
    successors = []

    def start(user, path=None, stdout=None):
        successors.append(FakeSuccessor(user, path, line=b""))  # it died while preloading
        return successors[-1]

    with mock.patch.object(zygote_client, "start_zygote", side_effect=start):
        zygote_client._replace(warm.user)
    assert "Could not replace the warm sandbox zygote" in caplog.text
    assert f"the new zygote of {warm.user} exited before it was ready (it said b'')" in caplog.text
    assert not os.path.exists(zygote_client.socket_path(warm.user) + ".next")
    process = zygote_client.run(warm.user, "/tmp/codejail-t", [])
    process.stdin.close()
    assert process.wait() == 0 and old.requests[0]["cwd"] == "/tmp/codejail-t"
    old.stop()
    successors[0].zygote.stop()


def test_a_new_zygote_that_is_not_ready_in_time_is_given_up(warm, caplog, monkeypatch):
    monkeypatch.setattr(zygote_client, "SUCCESSOR_TIMEOUT_SECONDS", 0.05)
    read_end, write_end = os.pipe()  # it says nothing: still preloading
    successor = FakeZygote(warm.user, path=zygote_client.socket_path(warm.user) + ".next")
    with mock.patch.object(zygote_client, "start_zygote") as start_zygote:
        start_zygote.return_value.stdout = os.fdopen(read_end, "rb")
        zygote_client._replace(warm.user)
    os.close(write_end)
    successor.listener.close()
    assert f"the new zygote of {warm.user} was not ready in 0.05 s" in caplog.text
    assert not os.path.exists(zygote_client.socket_path(warm.user) + ".next")


def test_one_replacement_per_slot_at_a_time_service_wide(warm):
    import fcntl

    lock_path = os.path.join(pool.slot_dir(), f"{warm.user}.successor.lock")
    with open(lock_path, "a") as other_worker:
        fcntl.flock(other_worker, fcntl.LOCK_EX)
        with mock.patch.object(zygote_client, "start_zygote") as start_zygote:
            zygote_client._replace(warm.user)
    start_zygote.assert_not_called()


def test_after_a_failed_zygote_no_worker_starts_another_for_the_slot_for_a_while(warm, caplog, monkeypatch):
    """
    A slot whose new zygotes keep failing does not start a preload for each of its runs: the
    failure's time is kept in the slot's lock file, which every worker reads. The service's start
    tries anyway; a zygote that preloads clears the record.
    """
    started = []

    def start(user, path=None, stdout=None):
        started.append(FakeSuccessor(user, path, line=b"" if len(started) < 2 else b"ready\n"))
        return started[-1]

    now = [1000.0]
    monkeypatch.setattr(zygote_client.time, "time", lambda: now[0])
    with mock.patch.object(zygote_client, "start_zygote", side_effect=start):
        zygote_client._replace(warm.user)  # fails
        assert "none is started for it for the next 30 s" in caplog.text
        now[0] += 29
        zygote_client._replace(warm.user)  # another worker, soon after: not started
        assert len(started) == 1
        zygote_client._replace(warm.user, retry=True)  # the service's start: fails again
        assert len(started) == 2
        now[0] += 31
        zygote_client._replace(warm.user)  # 31 s after that failure: ready
        assert len(started) == 3
        zygote_client._replace(warm.user)  # nothing failed lately: started at once
        assert len(started) == 4
    lock_path = os.path.join(pool.slot_dir(), f"{warm.user}.successor.lock")
    with open(lock_path, encoding="ascii") as lock:
        assert lock.read() == ""
    for successor in started:
        successor.zygote.stop()


def test_an_unreadable_failure_record_is_no_failure(warm):
    with open(os.path.join(pool.slot_dir(), f"{warm.user}.successor.lock"), "w", encoding="ascii") as lock:
        lock.write("garbage")
    with mock.patch.object(zygote_client, "_hand_over") as hand_over:
        zygote_client._replace(warm.user)
    hand_over.assert_called_once_with(warm.user)


def test_a_process_starts_one_replacement_thread_per_user(warm):
    with mock.patch.object(zygote_client, "_replace") as replace, mock.patch("threading.Thread") as thread:
        zygote_client._replacing.add(warm.user)
        try:
            zygote_client.replace(warm.user)
        finally:
            zygote_client._replacing.discard(warm.user)
        zygote_client.replace(warm.user)
    assert thread.call_count == 1 and thread.call_args.kwargs["args"] == (warm.user, False)
    replace.assert_not_called()  # (the thread is a mock)
    zygote_client._replacing.discard(warm.user)


def test_a_run_queued_on_a_zygote_that_exits_goes_to_its_successor(warm):
    """Retired (or past its lifetime) with our run queued: the connection is reset; run again."""
    old = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old.bind(zygote_client.socket_path(warm.user))
    old.listen(8)
    successor = []

    def receive(self, timeout):
        # The first answer: the old zygote exits without taking the run; its successor is in place.
        if not successor:
            old.close()
            os.unlink(zygote_client.socket_path(warm.user))
            successor.append(FakeZygote(warm.user, status=0))
            successor[0].start()
        return original(self, timeout)

    original = zygote_client.WarmRun.receive
    with mock.patch.object(zygote_client.WarmRun, "receive", receive), \
            mock.patch.object(zygote_client, "start_zygote") as start_zygote:
        process = zygote_client.run(warm.user, "/tmp/codejail-u", [])
    start_zygote.assert_not_called()
    process.stdin.close()
    assert process.wait() == 0
    successor[0].stop()


def test_start_all_starts_a_zygote_for_each_free_slot_without_one_and_waits_for_its_preload(warm, settings):
    # Slot 1 is held (the fixture); slot 0 has a zygote already (it is not replaced).
    there = FakeZygote(pool.pool_users()[0])
    there.start()
    with mock.patch.object(zygote_client, "start_zygote") as start_zygote, \
            mock.patch.object(processes, "become_child_subreaper") as subreaper:
        lifecycle.start_zygotes()
    start_zygote.assert_not_called()
    subreaper.assert_called_once_with()
    there.join(5)
    assert there.requests == [None]
    there.listener.close()
    successors = []

    def start(user, path=None, stdout=None):
        successors.append(FakeSuccessor(user, path))
        return successors[-1]

    with mock.patch.object(zygote_client, "start_zygote", side_effect=start), \
            mock.patch.object(processes, "become_child_subreaper"):
        lifecycle.start_zygotes()
    # Preloaded and in place when start_all returns: the startup checks' runs are forked by it.
    assert len(successors) == 1
    process = zygote_client.run(pool.pool_users()[0], "/tmp/codejail-c", [])
    process.stdin.close()
    assert process.wait() == 0 and successors[0].zygote.requests[0]["cwd"] == "/tmp/codejail-c"
    successors[0].zygote.stop()


def test_the_zygote_starts_as_its_own_python_where_one_is_named(warm, settings):
    settings.CODEJAIL_ZYGOTE_PYTHON = "/venv/bin/python-zygote"
    with mock.patch("subprocess.Popen") as popen:
        popen.return_value.pid = 98
        zygote_client.start_zygote(warm.user)
    assert popen.call_args[0][0][4] == "/venv/bin/python-zygote"


def test_a_successor_takes_the_slot_even_if_its_predecessor_is_gone(warm):
    successors = []

    def start(user, path=None, stdout=None):
        successors.append(FakeSuccessor(user, path))
        return successors[-1]

    with mock.patch.object(zygote_client, "start_zygote", side_effect=start):
        zygote_client._replace(warm.user)  # no zygote listens at <user>.sock: nothing to retire
    process = zygote_client.run(warm.user, "/tmp/codejail-v", [])
    process.stdin.close()
    assert process.wait() == 0 and successors[0].zygote.requests[0]["cwd"] == "/tmp/codejail-v"
    successors[0].zygote.stop()


def test_a_zygote_that_resets_the_connection_as_the_run_is_sent_is_gone(warm):
    zygote = FakeZygote(warm.user, status=0)
    zygote.start()
    with mock.patch.object(zygote_client.socket, "send_fds", side_effect=ConnectionResetError), \
            pytest.raises(zygote_client.ZygoteGone):
        zygote_client._run(warm.user, "/tmp/codejail-w", [])
    zygote.stop()


def test_a_reset_connection_mid_run_is_a_zygote_gone(warm):
    conn = mock.Mock()
    conn.recv.side_effect = ConnectionResetError
    read_ends = [os.pipe() for _ in range(3)]
    run = zygote_client.WarmRun(conn, read_ends[0][1], read_ends[1][0], read_ends[2][0])
    with mock.patch.object(zygote_client.select, "select"), pytest.raises(zygote_client.ZygoteGone):
        run.receive(0)
    run.close()
    for pair in read_ends:
        for fd in pair:
            try:
                os.close(fd)
            except OSError:
                pass


def test_a_run_the_zygote_cannot_fork_runs_in_a_fresh_interpreter(warm):
    cmd = ["sudo", "-u", "sbx", "TMPDIR=tmp", PYTHON_BIN, "-E", "-B", "jailed_code"]
    fresh = subprocess.Popen(["/bin/echo", "-n", "fresh"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    with mock.patch.object(zygote_client, "run", side_effect=zygote_client.ZygoteGone("gone")), \
            mock.patch("subprocess.Popen", return_value=fresh) as popen:
        result = run_program(warm, cmd, stdin=b"", cwd="/tmp/codejail-f")
    assert popen.call_args.args[0][-4:] == [PYTHON_BIN, "-E", "-B", "jailed_code"]
    assert result == (0, b"fresh", b"")


def test_a_run_whose_code_needs_little_is_asked_of_the_light_zygote(warm):
    zygote = FakeZygote(warm.user, status=0)
    zygote.start()
    run = Run(warm, WARM)
    run.light = True
    runner.run_program(run, ["unused"], stdin=b"[1]", cwd="/tmp/codejail-l")
    zygote.stop()
    assert zygote.requests[0]["light"] is True


def _lms_wrap():
    """benchmarks/lms_prolog.py's ``wrap``: code as the LMS sends it (its prolog, verbatim)."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks", "lms_prolog.py")
    spec = importlib.util.spec_from_file_location("lms_prolog", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.wrap


lms_wrap = _lms_wrap()


@pytest.mark.parametrize("code", [
    "x = x + 1",
    "import math, os.path as p\nfrom collections import OrderedDict\nfrom xml.etree import ElementTree\n",
    "from six.moves import xrange\nimport random2, json\n",
    "# import numpy: a comment says nothing\nx = 1\n",
    "x = 'numpy'  # a name in a string, but no import\n",
    lms_wrap("answers = [random.randint(1, 6) for _ in range(3)]\nok = math.sqrt(4) == 2\n"),
])
def test_code_that_needs_only_the_standard_library_is_light_enough(code):
    assert zygote_client.light_enough(code)


@pytest.mark.parametrize("code", [
    "import numpy",
    "import os, numpy as np",
    "x = 1; import scipy.stats",
    "from sympy import symbols",
    "from . import sibling",  # a course's own module
    "import course_lib",
    "if True:\n    import matplotlib.pyplot as plt\n",
    "s = '''\nimport numpy'''",  # in a string: maybe exec'd, so counted
    "s = '#'; import numpy",  # a hash in a string starts no comment
    lms_wrap("x = numpy.pi"),  # the LMS's lazy names load their modules when used
    lms_wrap("ok = chemcalc.chemical_equations_equal(ans, expect)"),
    lms_wrap("y = calc.evaluator({}, {}, '1+1')"),
])
def test_code_that_imports_more_goes_to_the_full_zygote(code):
    assert not zygote_client.light_enough(code)


def test_course_modules_or_long_code_go_to_the_full_zygote():
    assert zygote_client.light_enough("x = 1")
    assert not zygote_client.light_enough("x = 1", python_path=["python_lib.zip"])
    long_code = "x = 1\n" * (zygote_client.LIGHT_MAX_CODE_CHARS // 6 + 1)
    assert not zygote_client.light_enough(long_code)
    assert zygote_client.light_enough(long_code[:zygote_client.LIGHT_MAX_CODE_CHARS])


@pytest.mark.parametrize(("code", "uses"), [
    (lms_wrap("ok = chemcalc.chemical_equations_equal(ans, expect)"), ["chem"]),  # a lazy name, used
    (lms_wrap("import matplotlib.pyplot as plt\nx = numpy.pi"), ["matplotlib", "numpy"]),
    ("import os, sympy as s\nfrom scipy import stats", ["scipy", "sympy"]),
    (lms_wrap("x = math.sqrt(4)  # numpy, in a comment"), []),  # the lazy names it does not use say nothing
    ("import json", []),
])
def test_the_modules_beyond_the_light_ones_that_code_names_are_what_it_uses(code, uses):
    assert zygote_client.needs(code) == (not uses, uses)


def test_unread_code_uses_nothing_known_and_course_modules_are_not_light():
    assert zygote_client.needs("import sympy\n" * (zygote_client.LIGHT_MAX_CODE_CHARS // 13 + 1)) == (False, [])
    assert zygote_client.needs("import sympy", python_path=["python_lib.zip"]) == (False, ["sympy"])
    assert zygote_client.needs("import json", python_path=["python_lib.zip"]) == (False, [])
