"""The sandbox user pool: slots, the users' names, codejail's configuration, the startup checks per user."""

import importlib
import subprocess
import sys
from types import SimpleNamespace
from unittest import mock

import pytest
from codejail import jail_code

from codejail_service.apps.core import sandbox_pool, startup_checks
from codejail_service.apps.core.startup_checks import CheckResult


@pytest.fixture(autouse=True)
def _restore_codejail_configuration():
    """Leave codejail configured as the app configured it, for the other tests."""
    saved = dict(jail_code.COMMANDS)
    yield
    jail_code.COMMANDS.clear()
    jail_code.COMMANDS.update(saved)


@pytest.fixture
def pool_of_three(settings):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 3
    settings.CODE_JAIL = {**settings.CODE_JAIL, "user": "sbx"}


@pytest.fixture
def gunicorn_config(monkeypatch):
    monkeypatch.delitem(sys.modules, "codejail_service.gunicorn_config", raising=False)
    return importlib.import_module("codejail_service.gunicorn_config")


def test_pool_users_are_named_after_the_configured_user(pool_of_three):
    assert sandbox_pool.pool_users() == ["sbx-0", "sbx-1", "sbx-2"]
    assert sandbox_pool.sandbox_users() == ["sbx-0", "sbx-1", "sbx-2"]


def test_without_a_pool_every_worker_uses_the_configured_user(settings):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    assert sandbox_pool.pool_users() == []
    assert sandbox_pool.sandbox_users() == [settings.CODE_JAIL["user"]]


def test_free_slot_is_the_lowest_unused(pool_of_three):
    assert sandbox_pool.free_slot(set()) == 0
    assert sandbox_pool.free_slot({0, 2, None}) == 1


def test_free_slot_refuses_when_every_user_is_taken(pool_of_three):
    with pytest.raises(RuntimeError, match="all 3 users of the pool are taken"):
        sandbox_pool.free_slot({0, 1, 2})


def test_use_sandbox_user_configures_codejail(pool_of_three, settings):
    sandbox_pool.use_sandbox_user("sbx-2")
    assert jail_code.COMMANDS["python"]["user"] == "sbx-2"
    assert jail_code.COMMANDS["python"]["cmdline_start"] == [settings.CODE_JAIL["python_bin"], "-E", "-B"]


@pytest.mark.parametrize(("returncode", "stderr", "killed"), [
    (0, "", True),  # killed something
    (1, "kill: (-1): No such process\n", True),  # nothing left to kill
    (1, "sudo: a password is required\n", False),  # sudoers lacks the rule
])
def test_kill_processes_of_runs_kill_as_the_user(returncode, stderr, killed):
    done = subprocess.CompletedProcess([], returncode, "", stderr)
    with mock.patch("subprocess.run", return_value=done) as run:
        assert sandbox_pool.kill_processes_of("sbx-1") is killed
    assert run.call_args.args[0] == ["sudo", "-n", "-u", "sbx-1", "/usr/bin/kill", "-9", "-1"]


# --- gunicorn hooks -------------------------------------------------------------------------


def _server(num_workers, *slots):
    workers = {1000 + i: SimpleNamespace(sandbox_slot=slot) for i, slot in enumerate(slots)}
    return SimpleNamespace(num_workers=num_workers, WORKERS=workers, log=mock.Mock())


def test_on_starting_clamps_the_default_worker_count_to_the_pool(gunicorn_config, pool_of_three, monkeypatch):
    monkeypatch.delenv("CODEJAIL_SERVICE_WORKERS", raising=False)
    server = _server(8)
    gunicorn_config.on_starting(server)
    assert server.num_workers == 3


def test_on_starting_refuses_more_workers_than_users(gunicorn_config, pool_of_three, monkeypatch):
    monkeypatch.setenv("CODEJAIL_SERVICE_WORKERS", "4")
    with pytest.raises(SystemExit, match="CODEJAIL_SERVICE_WORKERS=4 exceeds the sandbox user pool"):
        gunicorn_config.on_starting(_server(4))


@pytest.mark.parametrize("pool_size", [0, 3])
def test_on_starting_keeps_a_worker_count_that_fits(gunicorn_config, settings, pool_size, monkeypatch):
    monkeypatch.setenv("CODEJAIL_SERVICE_WORKERS", "3")
    settings.CODEJAIL_SANDBOX_POOL_SIZE = pool_size
    server = _server(3)
    gunicorn_config.on_starting(server)
    assert server.num_workers == 3


def test_pre_fork_gives_each_worker_a_free_slot(gunicorn_config, pool_of_three):
    worker = SimpleNamespace()
    gunicorn_config.pre_fork(_server(3, 0, 2), worker)
    assert worker.sandbox_slot == 1


def test_pre_fork_without_a_pool_gives_no_slot(gunicorn_config, settings):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    worker = SimpleNamespace()
    gunicorn_config.pre_fork(_server(3, None), worker)
    assert worker.sandbox_slot is None


def test_post_fork_runs_code_as_the_slots_user(gunicorn_config, pool_of_three):
    gunicorn_config.post_fork(_server(3), SimpleNamespace(sandbox_slot=2, pid=1234))
    assert jail_code.COMMANDS["python"]["user"] == "sbx-2"


def test_post_fork_without_a_slot_keeps_the_configured_user(gunicorn_config, settings):
    sandbox_pool.use_sandbox_user(settings.CODE_JAIL["user"])
    gunicorn_config.post_fork(_server(3), SimpleNamespace(sandbox_slot=None, pid=1234))
    assert jail_code.COMMANDS["python"]["user"] == settings.CODE_JAIL["user"]


def test_child_exit_kills_what_the_workers_user_left(gunicorn_config, pool_of_three):
    with mock.patch.object(sandbox_pool, "kill_processes_of") as kill:
        gunicorn_config.child_exit(_server(3), SimpleNamespace(sandbox_slot=1))
    kill.assert_called_once_with("sbx-1")


def test_child_exit_without_a_slot_kills_nothing(gunicorn_config):
    """Without a pool the user is shared: killing its processes would end other workers' runs."""
    with mock.patch.object(sandbox_pool, "kill_processes_of") as kill:
        gunicorn_config.child_exit(_server(3), SimpleNamespace(sandbox_slot=None))
    kill.assert_not_called()


# --- startup checks, once per pool user ---------------------------------------------------------


@pytest.fixture
def fresh_checks(monkeypatch):
    startup_checks.reset_startup_checks()
    yield monkeypatch
    startup_checks.reset_startup_checks()


def _register(monkeypatch, **checks):
    monkeypatch.setattr(startup_checks, "STARTUP_CHECKS", {})
    for name, (check, uses_sandbox) in checks.items():
        startup_checks.startup_check(name, uses_sandbox=uses_sandbox)(check)


def test_sandbox_checks_run_once_per_pool_user(fresh_checks, pool_of_three, settings):
    seen = {"sandbox": [], "webapp": []}

    def sandbox_check():
        seen["sandbox"].append(jail_code.COMMANDS["python"]["user"])
        return CheckResult.ok(detail=1)

    def webapp_check():
        seen["webapp"].append(jail_code.COMMANDS["python"]["user"])
        return CheckResult.ok()

    _register(fresh_checks, probe=(sandbox_check, True), egress=(webapp_check, False))
    results = startup_checks.run_startup_checks()
    assert seen == {"sandbox": ["sbx-0", "sbx-1", "sbx-2"], "webapp": ["sbx"]}
    assert results["probe"] == CheckResult.ok(detail=1, sandbox_users=["sbx-0", "sbx-1", "sbx-2"])
    assert results["egress"] == CheckResult.ok()
    # The master goes back to the configured user; workers pick their own after fork.
    assert jail_code.COMMANDS["python"]["user"] == "sbx"


def test_a_check_failing_for_one_pool_user_fails_and_names_the_user(fresh_checks, pool_of_three):
    def sandbox_check():
        if jail_code.COMMANDS["python"]["user"] == "sbx-1":
            return CheckResult.fail("sudo: unknown user sbx-1", stderr="x")
        return CheckResult.ok()

    _register(fresh_checks, probe=(sandbox_check, True))
    result = startup_checks.run_startup_checks()["probe"]
    assert result == CheckResult.fail("as sandbox user sbx-1: sudo: unknown user sbx-1", stderr="x")
    assert not startup_checks.startup_checks_passed()
    assert jail_code.COMMANDS["python"]["user"] == "sbx"


def test_a_check_raising_for_one_pool_user_fails(fresh_checks, pool_of_three):
    def sandbox_check():
        raise OSError("boom")

    _register(fresh_checks, probe=(sandbox_check, True))
    result = startup_checks.run_startup_checks()["probe"]
    assert not result.passed
    assert result.reason == "as sandbox user sbx-0: check raised OSError('boom')"


def test_the_master_becomes_a_child_subreaper(gunicorn_config):
    """In a forked child (the flag is per process): prctl(PR_GET_CHILD_SUBREAPER) reads 1 after."""
    import ctypes
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child reports through the pipe
        gunicorn_config.become_child_subreaper()
        flag = ctypes.c_int(0)
        ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
        os.write(write, bytes([flag.value]))
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"\x01"
    os.waitpid(pid, 0)


def test_become_child_subreaper_logs_a_refusal(gunicorn_config, caplog):
    with mock.patch("ctypes.CDLL") as cdll:
        cdll.return_value.prctl.return_value = -1
        gunicorn_config.become_child_subreaper()
    assert "Could not become a child subreaper" in caplog.text
