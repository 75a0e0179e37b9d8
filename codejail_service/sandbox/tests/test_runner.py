"""
Tests of the runner: a run's program with its output capped, and the cleanup shortcut.

These start real (unprivileged, unsandboxed) python processes: the pipes are the point.
"""

import os
import re
import subprocess
import sys
import time
from unittest import mock

import pytest

from codejail_service.sandbox import processes, runner
from codejail_service.sandbox.pool import Slot
from codejail_service.sandbox.run import FRESH, Run

PYTHON = [sys.executable, "-S", "-c"]


@pytest.fixture
def cap(settings):
    settings.CODEJAIL_MAX_OUTPUT_BYTES = 10_000
    return settings.CODEJAIL_MAX_OUTPUT_BYTES


def run_subprocess(cmd, stdin=None, cwd=None, env=None, rlimits=None, realtime=None, slug=None, run_dir=None,
                   slot=None):
    """``runner.run_program`` for a fresh run of ``cmd`` (outside any pool slot unless ``slot``)."""
    run = Run(slot or Slot(None, "codejail-sandbox", None), FRESH)
    run.run_dir, run.rlimits, run.realtime = run_dir, tuple(rlimits or ()), realtime
    result = runner.run_program(run, cmd, stdin=stdin, cwd=cwd, env=env, slug=slug)
    run.ending()  # after the answer, as the slot is released (Run.release)
    return result


# --- output cap ---------------------------------------------------------------------------------


def test_output_under_the_cap_is_returned_whole_with_the_status(cap):
    code = "import sys; sys.stdout.write('o' * 4000); sys.stderr.write('e' * 4000); sys.exit(3)"
    status, stdout, stderr = run_subprocess(PYTHON + [code])
    assert (status, stdout, stderr) == (3, b"o" * 4000, b"e" * 4000)


def test_stdout_flood_is_cut_at_the_cap_and_the_run_fails_saying_so(cap):
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 1000); sys.stdout.flush()"
    status, stdout, stderr = run_subprocess(PYTHON + [code])
    assert len(stdout) + len(stderr.split(b"\n[codejail-service")[0]) == cap
    assert stdout == b"x" * len(stdout)
    assert b"[codejail-service: output truncated: the run wrote more than 10000 bytes" in stderr
    assert status != 0  # its next write failed: the flood ended with the run


def test_stdout_may_carry_back_as_much_as_the_run_was_given_plus_the_cap(cap):
    """The globals a request brought (on stdin) come back whole, however large."""
    given = b"g" * 50_000
    echo = "import sys; sys.stdout.write(sys.stdin.read() + 'n' * 10_000)"
    assert run_subprocess(PYTHON + [echo], stdin=given) == (0, given + b"n" * cap, b"")
    status, stdout, stderr = run_subprocess(PYTHON + [echo.replace("10_000", "10_001")], stdin=given)
    assert len(stdout) == len(given) + cap and status != 0
    assert b"wrote more than 60000 bytes to stdout" in stderr


def test_stderr_flood_keeps_its_head_and_its_last_lines_and_does_not_fail_the_run(cap):
    code = ("import sys\nfor i in range(2000): sys.stderr.write('noise %05d\\n' % i)\n"
            "sys.stderr.write('Traceback: the end'); sys.stdout.write('{\"x\": 1}')")
    status, stdout, stderr = run_subprocess(PYTHON + [code])
    assert (status, stdout) == (0, b'{"x": 1}')
    head, rest = stderr.split(b"\n[codejail-service: ")
    note, tail = rest.split(b"]\n")
    assert head.startswith(b"noise 00000\n") and len(head) == cap // 2
    assert tail.endswith(b"noise 01999\nTraceback: the end") and len(tail) == cap // 2
    assert note == f"{2000 * 12 + 18 - cap} bytes of stderr left out".encode()


def test_stderr_flood_beyond_the_drain_limit_is_closed_saying_so(cap):
    # 64 x the cap (640 kB here): then the pipe is closed; the run's next write fails.
    code = "import os\nwhile True:\n    os.write(2, b'x' * 1000)"
    status, _, stderr = run_subprocess(PYTHON + [code])
    assert status != 0
    closed = re.search(rb"\n\[codejail-service: stderr closed after ([0-9]+) bytes: a flood\]$", stderr)
    assert closed and 640_000 < int(closed[1]) <= 640_000 + runner.READ_SIZE, stderr[-200:]
    assert b"bytes of stderr left out" in stderr and len(stderr) < cap + 200


def test_stderr_within_its_cap_is_kept_whole(cap):
    code = f"import sys; sys.stderr.write('e' * {cap}); sys.exit(2)"
    assert run_subprocess(PYTHON + [code]) == (2, b"", b"e" * cap)


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
    with mock.patch.object(processes, "ProcessKillerThread") as killer:
        run_subprocess(PYTHON + ["pass"], realtime=3, slug="p1")
    assert killer.call_args.kwargs == {"limit": 3}
    killer.return_value.start.assert_called_once_with()


def test_a_backstop_that_fired_has_ended_its_kills_before_the_slot_is_released(cap, tmp_path, monkeypatch):
    """
    The backstop (REALTIME + BACKSTOP_SECONDS) kills the process groups of the slot's runs until
    none is left; were the slot released meanwhile, it could kill the next run's.
    """
    sudo = tmp_path / "sudo"  # `sudo -u <user> cmd...` runs cmd here, as this user
    sudo.write_text('#!/bin/sh\nshift 2\nexec "$@"\n')
    sudo.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    events = []  # ("left",): end_leftovers, the last step before the slot is released

    def slow_kill(user):
        events.append(("backstop starts", user))
        time.sleep(0.4)
        events.append(("backstop ends", user))

    slot = Slot(index=0, user="sbx-0", fd=None)
    with mock.patch.object(processes, "end_run_processes", side_effect=slow_kill), \
            mock.patch.object(processes, "end_leftovers", side_effect=lambda *_, **__: events.append(("left",))), \
            mock.patch.object(processes, "ProcessKillerThread"), \
            mock.patch.object(processes, "BACKSTOP_SECONDS", 0.0):
        status, _, _ = run_subprocess(["sudo", "-u", "sbx-0", *PYTHON, "import time; time.sleep(0.2)"],
                                      realtime=0.05, slot=slot)
    assert status == 0
    assert events == [("backstop starts", "sbx-0"), ("backstop ends", "sbx-0"), ("left",)]


# --- cleanup ------------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "tmp").mkdir()
    return tmp_path


def clean_tmp(run_dir):
    return runner.clean_tmp(Run(Slot(None, "codejail-sandbox", None), FRESH), str(run_dir / "tmp"))


def test_cleanup_of_an_empty_tmp_starts_no_process(run_dir):
    with mock.patch("subprocess.run") as run:
        assert clean_tmp(run_dir) == (0, b"", b"")
    run.assert_not_called()


def test_cleanup_removes_files_and_symlinks_itself_without_following_them(run_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "keep.txt"
    outside.write_text("keep")
    (run_dir / "tmp" / "a.txt").write_text("a")
    (run_dir / "tmp" / "link").symlink_to(outside)
    with mock.patch("subprocess.run") as run:
        assert clean_tmp(run_dir) == (0, b"", b"")
    run.assert_not_called()
    assert os.listdir(run_dir / "tmp") == []
    assert outside.read_text() == "keep"


def test_cleanup_of_a_directory_is_left_to_codejails_command_as_the_runs_user(run_dir):
    (run_dir / "tmp" / "matplotlib-abc").mkdir()
    (run_dir / "tmp" / "f").write_text("f")
    done = subprocess.CompletedProcess([], 0, b"", b"")
    with mock.patch("subprocess.run", return_value=done) as run:
        assert clean_tmp(run_dir) == (0, b"", b"")
    assert run.call_args.args[0] == ["sudo", "-n", "-u", "codejail-sandbox", "/usr/bin/find", str(run_dir / "tmp"),
                                     "-mindepth", "1", "-maxdepth", "1", "-exec", "rm", "-rf", "{}", ";"]
    assert run.call_args.kwargs["cwd"] == str(run_dir)  # as codejail runs it (AppArmor's codejail_cleanup)
    assert os.listdir(run_dir / "tmp") == ["matplotlib-abc"]  # the file went already


def test_cleanup_of_an_unreadable_tmp_is_left_to_codejails_command(run_dir):
    (run_dir / "tmp").rmdir()
    done = subprocess.CompletedProcess([], 1, b"", b"find: no such directory")
    with mock.patch("subprocess.run", return_value=done) as run:
        assert clean_tmp(run_dir) == (1, b"", b"find: no such directory")
    run.assert_called_once()


# --- the run directory in a failed run's messages -----------------------------------------------


@pytest.fixture
def codejail_run_dir(tmp_path):
    path = tmp_path / "codejail-a1B2_c3"
    path.mkdir()
    return str(path)


def test_a_failed_runs_output_names_its_run_dir_as_codejail_would(cap, codejail_run_dir):
    code = "import os, sys; print(os.getcwd() + '/jailed_code'); sys.exit(os.getcwd() + '/x')"
    status, stdout, stderr = run_subprocess(PYTHON + [code], cwd=codejail_run_dir, run_dir=codejail_run_dir)
    assert status == 1
    assert stdout == b"/tmp/codejail-a1B2_c3/jailed_code\n"
    assert stderr == b"/tmp/codejail-a1B2_c3/x\n"


def test_a_successful_runs_output_is_never_changed(cap, codejail_run_dir):
    status, stdout, _ = run_subprocess(PYTHON + ["import os; print(os.getcwd())"], cwd=codejail_run_dir,
                                       run_dir=codejail_run_dir)
    assert (status, stdout) == (0, f"{codejail_run_dir}\n".encode())


def test_other_directories_are_not_renamed_in_messages(cap, tmp_path, codejail_run_dir):
    code = "import os, sys; sys.exit(os.getcwd())"
    assert run_subprocess(PYTHON + [code], cwd=str(tmp_path), run_dir=codejail_run_dir)[2] == f"{tmp_path}\n".encode()


def test_a_run_dir_already_in_tmp_is_left_as_it_is(cap):
    assert runner._as_codejail_names_it("/tmp/codejail-x", b"/tmp/codejail-x/y") == b"/tmp/codejail-x/y"
