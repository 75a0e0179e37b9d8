"""
The warm sandbox's app side, against a stand-in zygote that speaks the protocol of
codejail_service/confinement/zygote.py (the real zygote runs in the live suite: make test-live-warm).
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

    def __init__(self, user, replies=None, status=3):
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(warm_sandbox.socket_path(user))
        self.listener.listen(1)
        self.replies = replies
        self.status = status
        self.requests = []
        self.stdin_seen = []

    def run(self):
        conn, _ = self.listener.accept()
        with conn:
            message, fds, _, _ = socket.recv_fds(conn, 4096, 3)
            self.requests.append(json.loads(message))
            if self.replies is not None:
                for reply in self.replies:
                    conn.send(reply)
                for fd in fds:
                    os.close(fd)
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
    assert zygote.requests == [{"cwd": "/tmp/codejail-x", "rlimits": [[6, 15, 15]]}]
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
    warm.end_leftovers.assert_called_once_with(warm, killed=False, keep=4000)


def test_without_the_setting_runs_stay_fresh_interpreters(warm, settings):
    settings.CODEJAIL_WARM_SANDBOX = False
    assert not warm_sandbox.enabled()
    with mock.patch.object(warm_sandbox, "run") as run:
        sandbox_runner.run_subprocess(["sudo", "-u", "sbx", "/bin/echo", "hi"], cwd="/")
    run.assert_not_called()


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
        gone.stop()
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
        zygotes[-1].stop()
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
    with mock.patch("subprocess.Popen") as popen:
        popen.return_value.pid = 99
        popen.return_value.poll.return_value = None
        warm_sandbox.start_zygote(warm.user)
    args, kwargs = popen.call_args
    assert args[0] == ["sudo", "-n", "-u", warm.user, PYTHON_BIN, "-E", "-B", "-S", settings.CODEJAIL_ZYGOTE_SCRIPT]
    assert kwargs["stdin"].family == socket.AF_UNIX and kwargs["stdout"] == subprocess.DEVNULL
    assert os.path.exists(warm_sandbox.socket_path(warm.user))
    assert 99 in warm_sandbox._started
    popen.return_value.poll.return_value = 0
    warm_sandbox._reap()
    assert 99 not in warm_sandbox._started


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
