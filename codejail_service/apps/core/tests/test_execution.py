"""Tests of run_code, the wrapper around codejail's safe_exec (mocked, nothing deeper)."""

import errno
import os
from unittest import mock

import pytest
from codejail.safe_exec import SafeExecException

from codejail_service.apps.core.execution import UNEXPECTED_ERROR_EMSG, run_code

SAFE_EXEC = "codejail_service.apps.core.execution.safe_exec"
# The run execution hands on to safe_exec (never looked into here: safe_exec is mocked).
RUN = object()


def test_success_returns_updated_copy_and_no_emsg():
    def ran(code, globals_dict, **kwargs):
        globals_dict["x"] = 17
        globals_dict["nested"]["k"].append(2)

    original = {"x": 16, "nested": {"k": [1]}}
    with mock.patch(SAFE_EXEC, side_effect=ran):
        globals_out, emsg = run_code("x = x + 1", original, run=RUN)
    assert emsg is None
    assert globals_out == {"x": 17, "nested": {"k": [1, 2]}}
    assert original == {"x": 16, "nested": {"k": [1]}}  # deep copy: not even nested values changed


def test_arguments_are_passed_through():
    with mock.patch(SAFE_EXEC) as safe_exec:
        run_code("c", {}, run=RUN, python_path=["python_lib.zip"], limit_overrides_context="ctx", slug="s",
                 extra_files=[("python_lib.zip", b"z")])
    safe_exec.assert_called_once_with(
        "c", {}, run=RUN, python_path=["python_lib.zip"], limit_overrides_context="ctx", slug="s",
        extra_files=[("python_lib.zip", b"z")],
    )


def test_safe_exec_exception_text_becomes_emsg_and_input_is_returned():
    message = "Couldn't execute jailed code: stdout: b'', stderr: b'boom' with status code: 1"

    def failing(code, globals_dict, **kwargs):
        globals_dict["x"] = "partial"
        raise SafeExecException(message)

    original = {"x": 16}
    with mock.patch(SAFE_EXEC, side_effect=failing):
        globals_out, emsg = run_code("raise", original, run=RUN)
    assert emsg == message
    assert globals_out == {"x": 16}
    assert original == {"x": 16}


def test_unexpected_exception_is_logged_recorded_and_answered_generically(caplog):
    with (
        mock.patch(SAFE_EXEC, side_effect=RuntimeError("safe_exec has not been configured for Python")),
        mock.patch("codejail_service.apps.core.execution.record_exception") as record_exception,
    ):
        globals_out, emsg = run_code("x = 1", {"x": 0}, run=RUN, slug="p9")
    assert emsg == UNEXPECTED_ERROR_EMSG
    assert "configured" not in emsg  # internal details stay in the log
    assert globals_out == {"x": 0}
    record_exception.assert_called_once_with()
    assert "Unexpected error while running code for 'p9'" in caplog.text
    assert "RuntimeError: safe_exec has not been configured" in caplog.text  # the traceback


def test_oversize_emsg_keeps_its_head_and_tail(settings):
    settings.CODEJAIL_MAX_EMSG_CHARS = 100
    message = "Couldn't execute jailed code: stdout: b'" + "x" * 10_000 + "', stderr: b'Err' with status code: -9"
    with mock.patch(SAFE_EXEC, side_effect=SafeExecException(message)):
        _, emsg = run_code("flood", {}, run=RUN)
    assert emsg.startswith("Couldn't execute jailed code: stdout: b'xxx")
    assert emsg.endswith("', stderr: b'Err' with status code: -9")
    assert f"[... {len(message) - 100} characters left out ...]" in emsg
    assert len(emsg) < 200


def test_emsg_at_the_limit_is_kept_whole(settings):
    message = "Couldn't execute jailed code: stdout: b'', stderr: b'boom' with status code: 1"
    settings.CODEJAIL_MAX_EMSG_CHARS = len(message)
    with mock.patch(SAFE_EXEC, side_effect=SafeExecException(message)):
        assert run_code("raise", {}, run=RUN)[1] == message


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_says_so_in_emsg(code):
    with mock.patch(SAFE_EXEC, side_effect=OSError(code, os.strerror(code))):
        globals_out, emsg = run_code("x = 1", {"x": 0}, run=RUN)
    assert emsg == f"Couldn't execute jailed code: no space left for its run directory ({os.strerror(code)})"
    assert globals_out == {"x": 0}


def test_other_os_errors_are_internal_errors():
    with mock.patch(SAFE_EXEC, side_effect=PermissionError(errno.EACCES, "denied")):
        assert run_code("x = 1", {}, run=RUN)[1] == UNEXPECTED_ERROR_EMSG
