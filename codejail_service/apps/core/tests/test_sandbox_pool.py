"""The sandbox user pool: slots, the users' names, codejail's configuration, the startup checks per user."""

import importlib
import os
import stat
import subprocess
import sys
import tempfile
import time
from unittest import mock

import pytest
from codejail import jail_code
from django.core.exceptions import ImproperlyConfigured

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
def pool_of_three(settings, tmp_path):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 3
    settings.CODE_JAIL = {**settings.CODE_JAIL, "user": "sbx"}
    settings.CODEJAIL_SLOT_DIR = str(tmp_path / "slots")


@pytest.fixture
def gunicorn_config(monkeypatch):
    monkeypatch.delitem(sys.modules, "codejail_service.gunicorn_config", raising=False)
    return importlib.import_module("codejail_service.gunicorn_config")


def test_pool_users_are_named_after_the_configured_user(pool_of_three):
    assert sandbox_pool.pool_users() == ["sbx-0", "sbx-1", "sbx-2"]


def test_without_a_pool_there_are_no_pool_users(settings):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    assert sandbox_pool.pool_users() == []


def _slot_file(settings, user):
    return os.path.join(settings.CODEJAIL_SLOT_DIR, f"{user}.lock")


def test_slot_dir_is_made_private(pool_of_three, settings):
    assert sandbox_pool.slot_dir() == settings.CODEJAIL_SLOT_DIR
    assert stat.S_IMODE(os.stat(settings.CODEJAIL_SLOT_DIR).st_mode) == 0o700


def test_default_slot_dir_is_in_the_temp_dir_and_not_named_like_a_run_dir(settings, tmp_path, monkeypatch):
    settings.CODEJAIL_SLOT_DIR = None
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert sandbox_pool.slot_dir() == str(tmp_path / f"codejail_service-slots.{os.geteuid()}")


def test_slot_dir_others_may_write_is_refused(pool_of_three, settings):
    os.mkdir(settings.CODEJAIL_SLOT_DIR, 0o700)
    os.chmod(settings.CODEJAIL_SLOT_DIR, 0o770)
    with pytest.raises(ImproperlyConfigured, match="mode 0700"):
        sandbox_pool.slot_dir()


def test_a_held_slot_is_not_given_twice_and_is_free_again_after_release(pool_of_three):
    first = sandbox_pool.try_acquire(1)
    assert (first.index, first.user) == (1, "sbx-1")
    assert sandbox_pool.try_acquire(1) is None  # also within one process: a new open file each time
    first.release()
    again = sandbox_pool.try_acquire(1)
    assert again is not None
    again.release()


def test_acquire_any_takes_the_lowest_free_slot_then_none(pool_of_three):
    held = [sandbox_pool.acquire_any() for _ in range(3)]
    assert [slot.user for slot in held] == ["sbx-0", "sbx-1", "sbx-2"]
    assert sandbox_pool.acquire_any() is None
    held[1].release()
    with sandbox_pool.acquire_any() as slot:
        assert slot.user == "sbx-1"
        assert sandbox_pool.held_slot() is slot
    assert sandbox_pool.held_slot() is None
    for slot in held[::2]:
        slot.release()


def test_without_a_pool_one_run_at_a_time_per_process(settings):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    with sandbox_pool.acquire_any() as slot:
        assert slot.user == settings.CODE_JAIL["user"]
        assert sandbox_pool.acquire_any() is None
    sandbox_pool.acquire_any().release()


def test_acquire_waits_for_a_slot_at_most_the_timeout(pool_of_three):
    with sandbox_pool.acquire(0):
        with pytest.raises(TimeoutError, match="slot 0 stayed busy"):
            sandbox_pool.acquire(0, timeout=0.1)


def test_sandbox_command_runs_as_the_held_slots_user(pool_of_three):
    cmd = ["sudo", "-u", "sbx", "TMPDIR=tmp", "/venv/bin/python", "-E", "-B", "jailed_code"]
    with sandbox_pool.acquire_any():
        assert sandbox_pool.sandbox_command(cmd) == ["sudo", "-u", "sbx-0", *cmd[3:]]
        assert sandbox_pool.sandbox_command(["sudo", "pkill", "-9", "-g", "12"]) == ["sudo", "pkill", "-9", "-g", "12"]
        with pytest.raises(RuntimeError, match="unexpected codejail command line"):
            sandbox_pool.sandbox_command(["sudo", "-u", "root", "id"])


def test_sandbox_command_without_a_held_slot_is_refused(pool_of_three):
    with pytest.raises(RuntimeError, match="outside a sandbox slot"):
        sandbox_pool.sandbox_command(["sudo", "-u", "sbx", "TMPDIR=tmp", "python"])


def test_sandbox_command_without_a_pool_is_codejails(settings):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    cmd = ["sudo", "-u", settings.CODE_JAIL["user"], "python"]
    assert sandbox_pool.sandbox_command(cmd) == cmd


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    root = tmp_path / "temp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _run_dir(temp_root):
    run_dir = temp_root / "codejail-abc123"
    (run_dir / "tmp").mkdir(parents=True)
    (run_dir / "tmp" / "left.txt").write_text("x")
    (run_dir / "jailed_code").write_text("x = 1")
    return run_dir


def test_a_slot_left_mid_run_is_recovered_by_its_next_holder(pool_of_three, settings, temp_root):
    """A real flock: a forked holder records its run dir and dies; the kernel frees the slot."""
    run_dir = _run_dir(temp_root)
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the dying holder
        sandbox_pool.try_acquire(2).record_run_dir(str(run_dir))
        os._exit(0)
    os.waitpid(pid, 0)
    with mock.patch.object(sandbox_pool, "kill_processes_of") as kill, \
            mock.patch("subprocess.run") as run:
        slot = sandbox_pool.try_acquire(2)
    kill.assert_called_once_with("sbx-2")
    assert run.call_args.args[0] == ["sudo", "-n", "-u", "sbx-2", "/usr/bin/find", str(run_dir / "tmp"),
                                     *sandbox_pool.CLEANUP_ARGS]
    assert not run_dir.exists()
    assert open(_slot_file(settings, "sbx-2"), "rb").read() == b""  # nothing left to recover
    slot.release()


def test_a_slot_released_normally_has_nothing_to_recover(pool_of_three, temp_root):
    run_dir = _run_dir(temp_root)
    with sandbox_pool.acquire_any() as slot:
        slot.record_run_dir(str(run_dir))
    with mock.patch.object(sandbox_pool, "kill_processes_of") as kill:
        sandbox_pool.recover_free_slots()
    kill.assert_not_called()
    assert run_dir.exists()


@pytest.mark.parametrize("where", ["outside", "not_ours", "gone"])
def test_recovery_removes_only_a_codejail_run_dir(pool_of_three, settings, temp_root, tmp_path, where):
    run_dir = _run_dir(temp_root)
    if where == "outside":
        target = tmp_path / "codejail-elsewhere"
        target.mkdir()
    elif where == "not_ours":
        target = run_dir
        os.chown(run_dir, 12345, 12345)
    else:
        target = temp_root / "codejail-gone"
    sandbox_pool.slot_dir()
    with open(_slot_file(settings, "sbx-0"), "w") as lock_file:  # as a holder that died would leave it
        lock_file.write(str(target))
    with mock.patch.object(sandbox_pool, "kill_processes_of") as kill, mock.patch("subprocess.run") as run:
        sandbox_pool.recover_free_slots()
    kill.assert_called_once_with("sbx-0")  # whatever the directory, the user's processes go
    run.assert_not_called()
    assert run_dir.exists()
    if where == "outside":
        assert target.exists()


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


# --- what a run leaves behind -------------------------------------------------------------------

def test_processes_of_lists_a_users_live_processes_and_not_its_zombies():
    zombie = os.fork()
    if zombie == 0:  # pragma: no cover
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while sandbox_pool._is_zombie(zombie) is False and time.monotonic() < deadline:  # noqa: SLF001
            time.sleep(0.01)
        found = sandbox_pool.processes_of(os.getuid())
        assert os.getpid() in found and zombie not in found
        assert os.getpid() not in sandbox_pool.processes_of(os.getuid() + 12345)
    finally:
        os.waitpid(zombie, 0)


@pytest.fixture
def slot_of_sbx():
    slot = sandbox_pool.Slot(1, "sbx-1", None)
    with mock.patch.object(sandbox_pool, "uid_of", return_value=4242), \
            mock.patch.object(sandbox_pool, "kill_processes_of") as kill:
        yield slot, kill


def test_end_leftovers_finds_nothing_after_a_clean_run(slot_of_sbx):
    slot, kill = slot_of_sbx
    with mock.patch.object(sandbox_pool, "processes_of", return_value=[77]):
        sandbox_pool.end_leftovers(slot, killed=False, keep=77)  # the zygote stays
    kill.assert_not_called()


def test_end_leftovers_waits_for_the_runs_last_exits(slot_of_sbx):
    slot, kill = slot_of_sbx
    with mock.patch.object(sandbox_pool, "processes_of", side_effect=[[5, 77], [5, 77], [77]]):
        sandbox_pool.end_leftovers(slot, killed=False, keep=77)
    kill.assert_not_called()


def test_end_leftovers_kills_them_all_at_once_after_a_killed_run(slot_of_sbx):
    slot, kill = slot_of_sbx
    with mock.patch.object(sandbox_pool, "processes_of", side_effect=[[5, 77], [5, 77], []]):
        sandbox_pool.end_leftovers(slot, killed=True, keep=77)
    kill.assert_called_once_with("sbx-1")


def test_end_leftovers_kills_them_all_when_they_stay(slot_of_sbx, monkeypatch):
    slot, kill = slot_of_sbx
    monkeypatch.setattr(sandbox_pool, "LEFTOVER_GRACE_SECONDS", 0.05)
    left = iter([[5]] * 50 + [[]])
    with mock.patch.object(sandbox_pool, "processes_of", side_effect=lambda uid: next(left)):
        sandbox_pool.end_leftovers(slot, killed=False)
    assert kill.call_count >= 1


def test_kill_all_processes_of_gives_up_on_processes_that_survive(slot_of_sbx):
    _, kill = slot_of_sbx
    with mock.patch.object(sandbox_pool, "processes_of", return_value=[5]):
        assert sandbox_pool.kill_all_processes_of("sbx-1", timeout=0.05) is False
    assert kill.call_count >= 1


# --- gunicorn hooks -------------------------------------------------------------------------


def test_child_exit_recovers_the_free_slots(gunicorn_config):
    with mock.patch.object(sandbox_pool, "recover_free_slots") as recover:
        gunicorn_config.child_exit(mock.Mock(), mock.Mock())
    recover.assert_called_once_with()


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
        seen["sandbox"].append(sandbox_pool.held_slot().user)
        return CheckResult.ok(detail=1)

    def webapp_check():
        seen["webapp"].append(sandbox_pool.held_slot())
        return CheckResult.ok()

    _register(fresh_checks, probe=(sandbox_check, True), egress=(webapp_check, False))
    results = startup_checks.run_startup_checks()
    assert seen == {"sandbox": ["sbx-0", "sbx-1", "sbx-2"], "webapp": [None]}
    assert results["probe"] == CheckResult.ok(detail=1, sandbox_users=["sbx-0", "sbx-1", "sbx-2"])
    assert results["egress"] == CheckResult.ok()
    assert sandbox_pool.held_slot() is None  # every slot given back


def test_a_check_failing_for_one_pool_user_fails_and_names_the_user(fresh_checks, pool_of_three):
    def sandbox_check():
        if sandbox_pool.held_slot().user == "sbx-1":
            return CheckResult.fail("sudo: unknown user sbx-1", stderr="x")
        return CheckResult.ok()

    _register(fresh_checks, probe=(sandbox_check, True))
    result = startup_checks.run_startup_checks()["probe"]
    assert result == CheckResult.fail("as sandbox user sbx-1: sudo: unknown user sbx-1", stderr="x")
    assert not startup_checks.startup_checks_passed()
    assert sandbox_pool.held_slot() is None


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


def test_recovery_removes_a_run_dir_in_the_slots_own_directory(pool_of_three, settings, tmp_path):
    settings.CODEJAIL_RUN_DIR_ROOT = str(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "1" / "codejail-xyz"
    (run_dir / "tmp").mkdir(parents=True)
    sandbox_pool.slot_dir()
    with open(_slot_file(settings, "sbx-1"), "w") as lock_file:
        lock_file.write(str(run_dir))
    with mock.patch.object(sandbox_pool, "kill_processes_of"), mock.patch("subprocess.run") as run:
        sandbox_pool.recover_free_slots()
    assert run.call_args.args[0][:5] == ["sudo", "-n", "-u", "sbx-1", "/usr/bin/find"]
    assert not run_dir.exists()


def test_end_leftovers_keeps_every_zygote_named(slot_of_sbx):
    """A zygote and its successor (warm_sandbox.replace) both stay; anything else is a leftover."""
    slot, kill = slot_of_sbx
    with mock.patch.object(sandbox_pool, "processes_of", return_value=[77, 78]):
        sandbox_pool.end_leftovers(slot, killed=False, keep={77, 78})
    kill.assert_not_called()


@pytest.mark.parametrize("gone", [FileNotFoundError, ProcessLookupError])
def test_processes_of_skips_a_process_gone_while_it_is_read(gone):
    """Reading /proc/<pid>/stat of a process that has just gone fails with ENOENT or ESRCH."""
    me = os.getpid()

    def is_zombie(pid):
        if int(pid) == me:
            raise gone(f"/proc/{pid}/stat")
        return False

    with mock.patch.object(sandbox_pool, "_is_zombie", side_effect=is_zombie):
        assert me not in sandbox_pool.processes_of(os.getuid())
    assert me in sandbox_pool.processes_of(os.getuid())
