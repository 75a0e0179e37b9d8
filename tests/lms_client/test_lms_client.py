"""
The LMS's own client (xblocks-contrib's capa safe_exec) against the live service: the course-style
corpus (corpus.py) in REST mode, and darklaunch against a local codejail (see conftest.py).
"""
import logging

import pytest
from codejail.safe_exec import SafeExecException

from tests.lms_client.corpus import ERRORS, SUCCESSES, python_lib_zip
from tests.lms_client.parity import PARITY
from tests.lms_client.venvs import LOCAL_VENV, SERVICE_SANDBOX_VENV


def run_case(safe_exec, case, globals_dict):
    """Call the client as capa's responsetypes do."""
    extra = {"python_path": ["python_lib.zip"], "extra_files": [("python_lib.zip", python_lib_zip())]} \
        if case.library else {}
    safe_exec(case.code, globals_dict, random_seed=case.seed, slug=f"lms-client-{case.name}",
              limit_overrides_context=case.course, **extra)


def check_globals(case, globals_dict):
    if callable(case.expect):
        assert case.expect(globals_dict) is not False, globals_dict
    else:
        for key, value in case.expect.items():
            assert globals_dict.get(key) == value, (key, globals_dict.get(key))


# --- REST mode: what the LMS gets from the service ------------------------------------------


@pytest.mark.parametrize("case", SUCCESSES, ids=lambda case: case.name)
def test_course_script_runs_through_the_lms_client(lms_client, case):
    globals_dict = dict(case.globals)
    run_case(lms_client, case, globals_dict)
    check_globals(case, globals_dict)


@pytest.mark.parametrize("case", ERRORS, ids=lambda case: case.name)
def test_failing_course_script_gives_the_student_codejails_message(lms_client, case):
    globals_dict = dict(case.globals)
    with pytest.raises(SafeExecException) as raised:
        run_case(lms_client, case, globals_dict)
    message = str(raised.value)
    assert message.startswith("Couldn't execute jailed code: stdout: b"), message
    assert message.endswith(". For more information check Codejail Service logs."), message
    text = message.replace("\\'", "'")  # emsg holds the output as bytes' repr
    for fragment in case.error:
        assert fragment in text, message
    assert "/var/lib/codejail-service" not in message and "zygote" not in message, message


def test_a_time_limit_reaches_the_student_as_codejails_message(lms_client):
    """
    A run killed at REALTIME (3 s) is answered before the client's own read timeout (3.5 s): the
    student sees the time-limit message, not "service unavailable" (CodejailServiceUnavailable).
    How much time is left is measured by make bench-timeout, not asserted here.
    """
    with pytest.raises(SafeExecException, match="status code: -9"):
        lms_client("import time\ntime.sleep(30)\n", {}, slug="lms-client-timeout")


def test_non_finite_floats_reach_the_lms_as_none(lms_client):
    """The client's simplejson refuses bare NaN / Infinity: they come back as null, so the answer parses."""
    globals_dict = {"x": 1.5}
    lms_client("import math\nnan = math.nan\ninf = [math.inf, -math.inf]\nfinite = x * 2\n", globals_dict)
    assert globals_dict == {"x": 1.5, "nan": None, "inf": [None, None], "finite": 3.0}


def test_made_globals_beyond_the_output_margin_fail_saying_so(lms_client):
    with pytest.raises(SafeExecException, match="output truncated: the run wrote more than"):
        lms_client("made = 'y' * (2 * 1024 * 1024)\n", {})


def test_seeded_random_is_the_same_for_the_same_seed_and_differs_for_another(lms_client):
    first, again, other = {}, {}, {}
    for globals_dict, seed in ((first, 3), (again, 3), (other, 4)):
        lms_client("r = [random.random() for _ in range(3)]\n", globals_dict, random_seed=seed)
    assert first == again and first != other


# --- darklaunch: the service compared with a local codejail by the client itself -------------


def darklaunch_case(lms_client, darklaunch, case, caplog):
    """
    Run ``case`` in darklaunch; return the client's recorded comparison, its mismatch log and the
    globals the LMS got (the local arm's).
    """
    globals_dict = dict(case.globals)
    with caplog.at_level(logging.INFO, logger="xblocks_contrib.problem.capa.safe_exec.safe_exec"):
        try:
            run_case(lms_client, case, globals_dict)
        except SafeExecException:
            pass  # the local arm's result, which the LMS uses
    return dict(darklaunch), caplog.text, globals_dict


@pytest.mark.parametrize(("case", "status"),
                         [(case, "safe_error") for case in ERRORS if case.darklaunch]
                         + [(case, "ok") for case in SUCCESSES if case.darklaunch],
                         ids=lambda value: getattr(value, "name", value))
def test_darklaunch_compares_equal(lms_client, darklaunch, case, status, caplog):
    """Every error case and every success: both arms agree on the status, the emsg and the globals."""
    attributes, log_text, _ = darklaunch_case(lms_client, darklaunch, case, caplog)
    assert attributes["codejail.darklaunch.status.local"] == status, (attributes, log_text)
    assert attributes["codejail.darklaunch.status.remote"] == status, (attributes, log_text)
    assert attributes["codejail.darklaunch.emsg_match"] is True, log_text
    assert attributes["codejail.darklaunch.globals_match"] is True, log_text


@pytest.mark.parametrize("case", PARITY, ids=lambda case: case.name)
def test_a_course_grader_gives_what_the_lms_sandbox_gives(lms_client, darklaunch, case, caplog):
    """
    The parity corpus (parity.py): the service and a local codejail of the platform's own pins give
    the same status, the same emsg (after the client's normalize_error_message) and the same globals;
    and what the LMS gets is what the case says the platform's packages give.
    """
    attributes, log_text, globals_dict = darklaunch_case(lms_client, darklaunch, case, caplog)
    assert attributes["codejail.darklaunch.status.local"] == case.status, (attributes, log_text)
    assert attributes["codejail.darklaunch.status.remote"] == case.status, (attributes, log_text)
    assert attributes["codejail.darklaunch.emsg_match"] is True, log_text
    assert attributes["codejail.darklaunch.globals_match"] is True, log_text
    if case.expect is not None:
        check_globals(case, globals_dict)


def test_the_local_arm_is_codejail_as_an_lms_host_runs_it(local_codejail):
    """The darklaunch comparison is with codejail itself: the sandbox user, /tmp/codejail-XXXX, limits."""
    from codejail.safe_exec import safe_exec  # the local codejail the fixture configured

    from tests.live.conftest import SANDBOX_USER

    globals_dict = {}
    safe_exec("import os, pwd, resource, numpy\nuser = pwd.getpwuid(os.getuid()).pw_name\ncwd = os.getcwd()\n"
              "cpu = resource.getrlimit(resource.RLIMIT_CPU)[0]\nnumpy_from = numpy.__file__\n", globals_dict)
    assert globals_dict["user"] == SANDBOX_USER
    assert globals_dict["cwd"].startswith("/tmp/codejail-")
    assert globals_dict["cpu"] == 1
    # The platform's packages in a venv of their own, not the service's.
    assert globals_dict["numpy_from"].startswith(f"{LOCAL_VENV}/lib/")
    assert not globals_dict["numpy_from"].startswith(SERVICE_SANDBOX_VENV)
