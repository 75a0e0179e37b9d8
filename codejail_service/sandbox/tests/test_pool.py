"""The sandbox user pool: slots, the users' names, run directories, recovery, the startup checks per user."""

import os
import stat
import tempfile
from unittest import mock

import pytest
from codejail import jail_code
from django.core.exceptions import ImproperlyConfigured

from codejail_service.apps.core import startup_checks
from codejail_service.apps.core.startup_checks import CheckResult
from codejail_service.sandbox import commands, pool


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


def test_pool_users_are_named_after_the_configured_user(pool_of_three):
    assert pool.pool_users() == ["sbx-0", "sbx-1", "sbx-2"]


def test_without_a_pool_there_are_no_pool_users(settings):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    assert pool.pool_users() == []


def _slot_file(settings, user):
    return os.path.join(settings.CODEJAIL_SLOT_DIR, f"{user}.lock")


def test_slot_dir_is_made_private(pool_of_three, settings):
    assert pool.slot_dir() == settings.CODEJAIL_SLOT_DIR
    assert stat.S_IMODE(os.stat(settings.CODEJAIL_SLOT_DIR).st_mode) == 0o700


def test_default_slot_dir_is_in_the_temp_dir_and_not_named_like_a_run_dir(settings, tmp_path, monkeypatch):
    settings.CODEJAIL_SLOT_DIR = None
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert pool.slot_dir() == str(tmp_path / f"codejail_service-slots.{os.geteuid()}")


def test_slot_dir_others_may_write_is_refused(pool_of_three, settings):
    os.mkdir(settings.CODEJAIL_SLOT_DIR, 0o700)
    os.chmod(settings.CODEJAIL_SLOT_DIR, 0o770)
    with pytest.raises(ImproperlyConfigured, match="mode 0700"):
        pool.slot_dir()


def test_a_held_slot_is_not_given_twice_and_is_free_again_after_release(pool_of_three):
    first = pool.try_acquire(1)
    assert (first.index, first.user) == (1, "sbx-1")
    assert pool.try_acquire(1) is None  # also within one process: a new open file each time
    first.release()
    again = pool.try_acquire(1)
    assert again is not None
    again.release()


def test_acquire_any_takes_the_lowest_free_slot_then_none(pool_of_three):
    held = [pool.acquire_any() for _ in range(3)]
    assert [slot.user for slot in held] == ["sbx-0", "sbx-1", "sbx-2"]
    assert pool.acquire_any() is None
    held[1].release()
    with pool.acquire_any() as slot:
        assert slot.user == "sbx-1"
    for slot in held[::2]:
        slot.release()


def test_without_a_pool_one_run_at_a_time_per_process(settings):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    with pool.acquire_any() as slot:
        assert slot.user == settings.CODE_JAIL["user"]
        assert pool.acquire_any() is None
    pool.acquire_any().release()


def test_acquire_waits_for_a_slot_at_most_the_timeout(pool_of_three):
    with pool.acquire(0):
        with pytest.raises(TimeoutError, match="slot 0 stayed busy"):
            pool.acquire(0, timeout=0.1)


def test_without_a_pool_acquire_waits_for_this_processes_turn(settings):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    with pool.acquire(None) as slot:
        assert (slot.index, slot.user) == (None, settings.CODE_JAIL["user"])
        with pytest.raises(TimeoutError, match="turn stayed busy"):
            pool.acquire(None, timeout=0.05)


def test_a_run_dir_is_made_in_its_slots_directory_and_noted_in_the_slot(pool_of_three, settings, tmp_path):
    settings.CODEJAIL_RUN_DIR_ROOT = str(tmp_path / "runs")
    (tmp_path / "runs" / "1").mkdir(parents=True)
    with pool.acquire(1) as slot:
        path = pool.make_run_dir(slot)
        assert os.path.dirname(path) == str(tmp_path / "runs" / "1")
        assert pool.is_run_dir(slot, path)
        assert open(_slot_file(settings, "sbx-1"), "rb").read() == os.fsencode(path)
        assert not pool.is_run_dir(slot, str(tmp_path / "runs" / "1" / "other"))
        assert not pool.is_run_dir(slot, str(tmp_path / "runs" / "0" / os.path.basename(path)))


def test_without_a_run_dir_root_run_dirs_go_to_the_temp_dir(pool_of_three, settings, tmp_path, monkeypatch):
    settings.CODEJAIL_RUN_DIR_ROOT = None
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pool.acquire(0) as slot:
        assert pool.run_dir_parent(slot) == str(tmp_path)


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
        pool.try_acquire(2).record_run_dir(str(run_dir))
        os._exit(0)
    os.waitpid(pid, 0)
    with mock.patch.object(pool.processes, "end_run_processes") as kill, \
            mock.patch("subprocess.run") as run:
        slot = pool.try_acquire(2)
    kill.assert_called_once_with("sbx-2")
    assert run.call_args.args[0] == commands.cleanup("sbx-2", str(run_dir / "tmp"))
    assert not run_dir.exists()
    assert open(_slot_file(settings, "sbx-2"), "rb").read() == b""  # nothing left to recover
    slot.release()


def test_a_slot_released_normally_has_nothing_to_recover(pool_of_three, temp_root):
    run_dir = _run_dir(temp_root)
    with pool.acquire_any() as slot:
        slot.record_run_dir(str(run_dir))
    with mock.patch.object(pool.processes, "end_run_processes") as kill:
        pool.recover_free_slots()
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
    pool.slot_dir()
    with open(_slot_file(settings, "sbx-0"), "w") as lock_file:  # as a holder that died would leave it
        lock_file.write(str(target))
    with mock.patch.object(pool.processes, "end_run_processes") as kill, mock.patch("subprocess.run") as run:
        pool.recover_free_slots()
    kill.assert_called_once_with("sbx-0")  # whatever the directory, its run's processes go (not the zygote)
    run.assert_not_called()
    assert run_dir.exists()
    if where == "outside":
        assert target.exists()


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

    def sandbox_check(run):
        seen["sandbox"].append(run.user)
        return CheckResult.ok(detail=1)

    def webapp_check(*run):
        seen["webapp"].append(run)
        return CheckResult.ok()

    _register(fresh_checks, probe=(sandbox_check, True), egress=(webapp_check, False))
    results = startup_checks.run_startup_checks()
    assert seen == {"sandbox": ["sbx-0", "sbx-1", "sbx-2"], "webapp": [()]}
    assert results["probe"] == CheckResult.ok(detail=1, sandbox_users=["sbx-0", "sbx-1", "sbx-2"])
    assert results["egress"] == CheckResult.ok()
    assert all(pool.try_acquire(index).release() is None for index in range(3))  # every slot given back


def test_a_check_failing_for_one_pool_user_fails_and_names_the_user(fresh_checks, pool_of_three):
    def sandbox_check(run):
        if run.user == "sbx-1":
            return CheckResult.fail("sudo: unknown user sbx-1", stderr="x")
        return CheckResult.ok()

    _register(fresh_checks, probe=(sandbox_check, True))
    result = startup_checks.run_startup_checks()["probe"]
    assert result == CheckResult.fail("as sandbox user sbx-1: sudo: unknown user sbx-1", stderr="x")
    assert not startup_checks.startup_checks_passed()


def test_a_check_raising_for_one_pool_user_fails(fresh_checks, pool_of_three):
    def sandbox_check(run):
        raise OSError("boom")

    _register(fresh_checks, probe=(sandbox_check, True))
    result = startup_checks.run_startup_checks()["probe"]
    assert not result.passed
    assert result.reason == "as sandbox user sbx-0: check raised OSError('boom')"


def test_recovery_removes_a_run_dir_in_the_slots_own_directory(pool_of_three, settings, tmp_path):
    settings.CODEJAIL_RUN_DIR_ROOT = str(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "1" / "codejail-xyz"
    (run_dir / "tmp").mkdir(parents=True)
    pool.slot_dir()
    with open(_slot_file(settings, "sbx-1"), "w") as lock_file:
        lock_file.write(str(run_dir))
    with mock.patch.object(pool.processes, "end_run_processes"), mock.patch("subprocess.run") as run:
        pool.recover_free_slots()
    assert run.call_args.args[0][:5] == ["sudo", "-n", "-u", "sbx-1", "/usr/bin/find"]
    assert not run_dir.exists()


