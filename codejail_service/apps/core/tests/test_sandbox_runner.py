"""
Tests of the subprocess runner codejail uses here: the output cap and the cleanup shortcut.

These start real (unprivileged, unsandboxed) python processes: the pipes are the point.
"""

import os
import sys
import tempfile
from unittest import mock

import pytest
from codejail import jail_code

from codejail_service.apps.core import sandbox_pool, sandbox_runner
from codejail_service.apps.core.sandbox_runner import run_subprocess

PYTHON = [sys.executable, "-S", "-c"]


@pytest.fixture
def cap(settings):
    settings.CODEJAIL_MAX_OUTPUT_BYTES = 10_000
    return settings.CODEJAIL_MAX_OUTPUT_BYTES


def test_install_points_codejail_at_the_runner():
    with mock.patch.object(jail_code, "run_subprocess", "codejail's own"), \
            mock.patch.object(jail_code, "temp_directory", "codejail's own"):
        sandbox_runner.install()
        assert jail_code.run_subprocess is run_subprocess
        assert jail_code.temp_directory is sandbox_runner.temp_directory


@pytest.fixture
def slot_run_dirs(settings, tmp_path):
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 2
    settings.CODEJAIL_SLOT_DIR = str(tmp_path / "slots")
    settings.CODEJAIL_RUN_DIR_ROOT = str(tmp_path / "runs")
    for index in range(2):
        os.makedirs(tmp_path / "runs" / str(index))
    return tmp_path / "runs"


def test_a_run_dir_is_made_in_its_slots_directory_and_removed_after(slot_run_dirs):
    with sandbox_pool.acquire(1), sandbox_runner.temp_directory() as path:
        assert os.path.dirname(path) == str(slot_run_dirs / "1")
        assert os.path.basename(path).startswith("codejail-")
        open(os.path.join(path, "jailed_code"), "w").close()
    assert os.listdir(slot_run_dirs / "1") == []


def test_without_a_run_dir_root_run_dirs_go_to_the_temp_dir(slot_run_dirs, settings, tmp_path, monkeypatch):
    settings.CODEJAIL_RUN_DIR_ROOT = None
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with sandbox_pool.acquire(1), sandbox_runner.temp_directory() as path:
        assert os.path.dirname(path) == str(tmp_path)


def test_the_run_dir_is_noted_in_the_slot_from_the_moment_it_exists(slot_run_dirs, tmp_path):
    lock_file = tmp_path / "slots" / f"{sandbox_pool.pool_users()[0]}.lock"
    with sandbox_pool.acquire(0), sandbox_runner.temp_directory() as path:
        assert lock_file.read_bytes() == path.encode()
    assert lock_file.read_bytes() == b""  # released: nothing to recover


# --- output cap ---------------------------------------------------------------------------------


def test_output_under_the_cap_is_returned_whole_with_the_status(cap):
    code = "import sys; sys.stdout.write('o' * 4000); sys.stderr.write('e' * 4000); sys.exit(3)"
    status, stdout, stderr = run_subprocess(PYTHON + [code])
    assert (status, stdout, stderr) == (3, b"o" * 4000, b"e" * 4000)


def test_flood_is_cut_at_the_cap_and_the_run_fails_saying_so(cap):
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 1000); sys.stdout.flush()"
    status, stdout, stderr = run_subprocess(PYTHON + [code])
    assert len(stdout) + len(stderr.split(b"\n[codejail-service")[0]) == cap
    assert stdout == b"x" * len(stdout)
    assert b"[codejail-service: output truncated: the run wrote more than 10000 bytes" in stderr
    assert status != 0  # its next write failed: the flood ended with the run


def test_stdout_and_stderr_count_against_one_cap(cap):
    # Each stream alone is under the cap; together they are over it.
    code = "import sys; sys.stderr.write('e' * 6000); sys.stderr.flush(); sys.stdout.write('o' * 6000)"
    status, stdout, stderr = run_subprocess(PYTHON + [code])
    captured_stderr = stderr.split(b"\n[codejail-service")[0]
    assert len(stdout) + len(captured_stderr) == cap
    assert b"output truncated" in stderr
    assert status != 0


def test_truncated_run_that_exits_zero_still_fails(cap):
    # Ignores the broken pipe and exits 0: its (cut) globals must not pass as a success.
    code = (
        "import os\n"
        "try:\n"
        "    while True: os.write(1, b'x' * 1000)\n"
        "except OSError: pass\n"
        "os._exit(0)"
    )
    status, _, stderr = run_subprocess(PYTHON + [code])
    assert status == 1
    assert b"output truncated" in stderr


def test_output_exactly_at_the_cap_is_not_truncated(cap):
    code = f"import sys; sys.stdout.write('x' * {cap})"
    assert run_subprocess(PYTHON + [code]) == (0, b"x" * cap, b"")


def test_stdin_larger_than_a_pipe_buffer_is_delivered(cap, settings):
    settings.CODEJAIL_MAX_OUTPUT_BYTES = 2_000_000
    data = os.urandom(600_000)
    code = "import sys, hashlib; sys.stdout.write(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    import hashlib

    assert run_subprocess(PYTHON + [code], stdin=data) == (0, hashlib.sha256(data).hexdigest().encode(), b"")


def test_run_that_does_not_read_its_stdin_still_ends(cap):
    status, stdout, _ = run_subprocess(PYTHON + ["print('done')"], stdin=b"z" * 1_000_000)
    assert (status, stdout) == (0, b"done\n")


def test_rlimits_cwd_and_env_are_applied(cap, tmp_path):
    import resource

    code = ("import os, resource; print(os.getcwd(), resource.getrlimit(resource.RLIMIT_FSIZE)[0], "
            "os.environ.get('HOME'), os.getsid(0) == os.getpid())")
    status, stdout, _ = run_subprocess(PYTHON + [code], cwd=str(tmp_path), env={},
                                       rlimits=[(resource.RLIMIT_FSIZE, (4096, 4096))])
    assert (status, stdout.decode()) == (0, f"{tmp_path} 4096 None True\n")


def test_realtime_starts_codejails_killer(cap):
    with mock.patch.object(sandbox_runner, "ProcessKillerThread") as killer:
        run_subprocess(PYTHON + ["pass"], realtime=3, slug="p1")
    assert killer.call_args.kwargs == {"limit": 3}
    killer.return_value.start.assert_called_once_with()


# --- cleanup ------------------------------------------------------------------------------------


def cleanup_cmd(run_dir):
    return ["sudo", "-u", "codejail-sandbox", "/usr/bin/find", os.path.join(run_dir, "tmp"),
            *sandbox_pool.CLEANUP_ARGS]


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "tmp").mkdir()
    return tmp_path


def test_cleanup_of_an_empty_tmp_starts_no_process(run_dir):
    with mock.patch("subprocess.Popen") as popen:
        assert run_subprocess(cleanup_cmd(str(run_dir)), cwd=str(run_dir)) == (0, b"", b"")
    popen.assert_not_called()


def test_cleanup_removes_files_and_symlinks_itself_without_following_them(run_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "keep.txt"
    outside.write_text("keep")
    (run_dir / "tmp" / "a.txt").write_text("a")
    (run_dir / "tmp" / "link").symlink_to(outside)
    with mock.patch("subprocess.Popen") as popen:
        assert run_subprocess(cleanup_cmd(str(run_dir)), cwd=str(run_dir)) == (0, b"", b"")
    popen.assert_not_called()
    assert os.listdir(run_dir / "tmp") == []
    assert outside.read_text() == "keep"


def test_cleanup_of_a_directory_is_left_to_codejails_command(run_dir, cap):
    (run_dir / "tmp" / "matplotlib-abc").mkdir()
    (run_dir / "tmp" / "f").write_text("f")
    cmd = cleanup_cmd(str(run_dir))
    with mock.patch("subprocess.Popen", side_effect=OSError("ran")) as popen:
        with pytest.raises(OSError, match="ran"):
            run_subprocess(cmd, cwd=str(run_dir))
    assert popen.call_args.args[0] == cmd
    assert os.listdir(run_dir / "tmp") == ["matplotlib-abc"]  # the file went already


def test_cleanup_of_an_unreadable_tmp_is_left_to_codejails_command(run_dir, cap):
    (run_dir / "tmp").rmdir()
    with mock.patch("subprocess.Popen", side_effect=OSError("ran")) as popen:
        with pytest.raises(OSError, match="ran"):
            run_subprocess(cleanup_cmd(str(run_dir)), cwd=str(run_dir))
    popen.assert_called_once()


@pytest.mark.parametrize(
    "change",
    [
        lambda cmd, run_dir: cmd[:4] + [os.path.join(run_dir, "elsewhere")] + cmd[5:],  # not the run's tmp/
        lambda cmd, run_dir: cmd[:-1] + ["+"],  # not codejail's arguments
    ],
)
def test_other_find_commands_are_run_as_given(run_dir, cap, change):
    cmd = change(cleanup_cmd(str(run_dir)), str(run_dir))
    with mock.patch("subprocess.Popen", side_effect=OSError("ran")) as popen:
        with pytest.raises(OSError, match="ran"):
            run_subprocess(cmd, cwd=str(run_dir))
    assert popen.call_args.args[0] == cmd


def test_cleanup_without_a_cwd_is_run_as_given(run_dir, cap):
    with mock.patch("subprocess.Popen", side_effect=OSError("ran")) as popen:
        with pytest.raises(OSError, match="ran"):
            run_subprocess(cleanup_cmd(str(run_dir)))
    popen.assert_called_once()
