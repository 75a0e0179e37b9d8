"""Tests of POST /api/v0/code-exec, with codejail's safe_exec mocked (and nothing deeper)."""

import gc
import json
import math
from unittest import mock

import pytest
from codejail.safe_exec import SafeExecException
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from codejail_service.apps.api.v0.views import RunAnswer
from codejail_service.sandbox.run import Run

URL = "/api/v0/code-exec"
SAFE_EXEC = "codejail_service.apps.core.execution.safe_exec"
SET_ATTRIBUTE = "codejail_service.apps.api.v0.views.set_custom_attribute"

# A codejail failure message as safe_exec raises it for a student error.
FAILED_RUN = (
    "Couldn't execute jailed code: stdout: b'', stderr: b'Traceback (most recent call last):\\n"
    "ZeroDivisionError: division by zero\\n' with status code: 1"
)


def payload(**fields):
    """A valid payload (as the LMS builds it) with ``fields`` changed."""
    body = {
        "code": "x = x + 1",
        "globals_dict": {"x": 16},
        "python_path": [],
        "limit_overrides_context": None,
        "slug": "block-v1:edX+Demo+2026+type@problem+block@abc",
        "unsafely": False,
    }
    body.update(fields)
    return json.dumps(body)


def fake_safe_exec(code, globals_dict, **kwargs):
    """Run ``code`` in-process the way safe_exec reports it: globals updated in place."""
    scope = dict(globals_dict)
    exec(code, scope)  # trusted test code only
    scope.pop("__builtins__", None)
    globals_dict.update(scope)


def post(client, data, **extra):
    return client.post(URL, data, **extra)


def assert_json(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    return json.loads(response.content)


@pytest.fixture
def client():
    return Client()


@pytest.fixture
def safe_exec():
    with mock.patch(SAFE_EXEC, side_effect=fake_safe_exec) as patched:
        yield patched


@pytest.fixture
def attributes():
    """Custom attributes recorded by the view, as a dict."""
    with mock.patch(SET_ATTRIBUTE) as patched:
        recorded = {}
        patched.side_effect = recorded.__setitem__
        yield recorded


# --- the status table: executed ---------------------------------------------------------------


def test_successful_run_answers_200_with_globals(client, enabled, safe_exec, attributes):
    body = assert_json(post(client, {"payload": payload()}), 200)
    assert body == {"globals_dict": {"x": 17}}
    assert attributes["codejail_service.status"] == "executed.success"


def test_an_answer_says_where_its_runs_time_went(client, enabled, safe_exec):
    response = post(client, {"payload": payload()})
    assert response.status_code == 200
    metrics = dict(part.strip().split(";", 1) for part in response["Server-Timing"].split(","))
    # The stages this run went through to its answer (safe_exec is mocked: no program ran, so no
    # "run"); its slot is released after the answer.
    assert list(metrics)[:1] == ["admit"] and "release" not in metrics
    assert all(value.startswith("dur=") and float(value[4:]) >= 0 for value in metrics.values())


def test_a_runs_slot_is_released_once_its_answer_is_sent():
    slot = mock.Mock(index=None, user="sbx")
    run = Run(slot, "fresh")
    answer = RunAnswer({"globals_dict": {}}, run)
    slot.release.assert_not_called()
    answer.close()  # the WSGI server, once it has sent the answer
    answer.close()
    slot.release.assert_called_once_with()


def test_a_runs_slot_is_released_when_its_answer_is_dropped_unsent():
    # The twin of the one above: an error past the view drops the answer without closing it.
    slot = mock.Mock(index=None, user="sbx")
    answer = RunAnswer({"globals_dict": {}}, Run(slot, "fresh"))
    slot.release.assert_not_called()
    del answer
    gc.collect()
    slot.release.assert_called_once_with()


def test_successful_run_passes_payload_fields_to_safe_exec(client, enabled, safe_exec):
    post(client, {"payload": payload(limit_overrides_context="course-v1:edX+Big+2026", slug="p1")})
    safe_exec.assert_called_once()
    args, kwargs = safe_exec.call_args
    assert args[0] == "x = x + 1"
    assert args[1] == {"x": 17}  # the copy safe_exec worked on (and updated)
    assert isinstance(kwargs.pop("run"), Run)  # the run the admission gate handed out
    assert kwargs == {
        "python_path": [],
        "limit_overrides_context": "course-v1:edX+Big+2026",
        "slug": "p1",
        "extra_files": [],
    }


def test_failed_run_answers_200_with_input_globals_and_codejail_emsg(client, enabled, attributes):
    def raising(code, globals_dict, **kwargs):
        globals_dict["x"] = "half-done"  # must not leak into the answer
        raise SafeExecException(FAILED_RUN)

    with mock.patch(SAFE_EXEC, side_effect=raising):
        body = assert_json(post(client, {"payload": payload(code="1/0")}), 200)
    assert body == {"globals_dict": {"x": 16}, "emsg": FAILED_RUN}
    assert attributes["codejail_service.status"] == "executed.error"


def test_killed_run_reports_status_minus_nine(client, enabled):
    killed = "Couldn't execute jailed code: stdout: b'', stderr: b'' with status code: -9"
    with mock.patch(SAFE_EXEC, side_effect=SafeExecException(killed)):
        body = assert_json(post(client, {"payload": payload(code="while True: pass")}), 200)
    assert body["emsg"] == killed
    assert body["globals_dict"] == {"x": 16}


def test_lms_style_multipart_request_with_python_lib_zip(client, enabled, safe_exec, attributes):
    """What edx-platform's remote_exec sends: payload field + python_lib.zip file part."""
    zip_bytes = b"PK\x05\x06" + b"\x00" * 18  # an empty zip archive
    data = {
        "payload": payload(python_path=["python_lib.zip"]),
        "python_lib.zip": SimpleUploadedFile("python_lib.zip", zip_bytes),
    }
    body = assert_json(post(client, data), 200)  # Django's test client posts multipart
    assert body == {"globals_dict": {"x": 17}}
    kwargs = safe_exec.call_args.kwargs
    assert kwargs["python_path"] == ["python_lib.zip"]
    assert kwargs["extra_files"] == [("python_lib.zip", zip_bytes)]
    assert attributes["codejail_service.files_count"] == 1
    assert attributes["codejail_service.python_path_length"] == 1


def test_urlencoded_form_is_accepted(client, enabled, safe_exec):
    from urllib.parse import urlencode

    response = client.post(URL, urlencode({"payload": payload()}), content_type="application/x-www-form-urlencoded")
    assert assert_json(response, 200) == {"globals_dict": {"x": 17}}


def test_null_python_path_slug_and_context_are_accepted(client, enabled, safe_exec, attributes):
    body = assert_json(post(client, {"payload": payload(python_path=None, slug=None)}), 200)
    assert body == {"globals_dict": {"x": 17}}
    assert safe_exec.call_args.kwargs["python_path"] == []
    assert attributes["codejail_service.slug"] is None
    assert attributes["codejail_service.limit_overrides_context"] is None
    assert attributes["codejail_service.python_path_length"] == 0


def test_minimal_payload_with_only_required_keys(client, enabled, safe_exec):
    data = {"payload": json.dumps({"code": "y = 2", "globals_dict": {}})}
    assert assert_json(post(client, data), 200) == {"globals_dict": {"y": 2}}


def test_unknown_payload_keys_are_tolerated(client, enabled, safe_exec):
    """A newer LMS may add keys; grading must not break over them."""
    data = {"payload": json.dumps({"code": "y = 2", "globals_dict": {}, "future_key": 1})}
    assert assert_json(post(client, data), 200) == {"globals_dict": {"y": 2}}


def test_telemetry_records_request_details(client, enabled, safe_exec, attributes):
    post(client, {"payload": payload(slug="p7", limit_overrides_context="ctx")})
    assert attributes == {
        "codejail_service.slug": "p7",
        "codejail_service.files_count": 0,
        "codejail_service.python_path_length": 0,
        "codejail_service.limit_overrides_context": "ctx",
        "codejail_service.status": "executed.success",
    }


# --- JSON fidelity ------------------------------------------------------------------------------


def strict_json(content):
    """Parse as the LMS does (requests + simplejson 3.20): bare NaN / Infinity tokens are refused."""
    def refuse(token):
        raise ValueError(f"bare {token} in the answer")
    return json.loads(content, parse_constant=refuse)


def test_nan_and_infinity_in_are_floats_and_come_back_as_null(client, enabled, safe_exec):
    raw = '{"code": "z = [a, b, c, 1.5]", "globals_dict": {"a": NaN, "b": Infinity, "c": -Infinity}}'
    response = post(client, {"payload": raw})
    assert response.status_code == 200
    # In: safe_exec saw real floats.
    seen = safe_exec.call_args.args[1]
    assert math.isnan(seen["a"]) and seen["b"] == math.inf and seen["c"] == -math.inf
    # Out: null, which a strict parser reads; finite floats are untouched.
    body = strict_json(response.content)
    assert body["globals_dict"] == {"a": None, "b": None, "c": None, "z": [None, None, None, 1.5]}


def test_non_finite_input_globals_of_a_failed_run_come_back_as_null(client, enabled):
    with mock.patch(SAFE_EXEC, side_effect=SafeExecException(FAILED_RUN)):
        response = post(client, {"payload": '{"code": "1/0", "globals_dict": {"a": [NaN, 2.0]}}'})
    body = strict_json(response.content)
    assert body == {"globals_dict": {"a": [None, 2.0]}, "emsg": FAILED_RUN}


def test_non_bmp_unicode_round_trips(client, enabled, safe_exec):
    text = "snake \U0001f40d, math \U0001d465, cafe\u0301"
    response = post(client, {"payload": payload(code="s = s + '!'", globals_dict={"s": text})})
    body = assert_json(response, 200)
    assert body["globals_dict"]["s"] == text + "!"


def test_lone_surrogate_in_globals_does_not_break_the_response(client, enabled, safe_exec):
    """codejail lets unpaired surrogates through; the answer must still be valid JSON."""
    response = post(client, {"payload": payload(code="s = '\\ud800'", globals_dict={})})
    body = assert_json(response, 200)
    assert body["globals_dict"]["s"] == "\ud800"


# --- the status table: execution switched off ----------------------------------------------------


def test_disabled_toggle_answers_503_and_runs_nothing(client, settings, checks_passed, safe_exec, attributes):
    settings.CODEJAIL_ENABLED = False
    body = assert_json(post(client, {"payload": payload()}), 503)
    assert "CODEJAIL_ENABLED" in body["error"]
    safe_exec.assert_not_called()
    assert attributes["codejail_service.status"] == "disabled.toggle"


def test_toggle_missing_from_settings_means_disabled(client, settings, checks_passed, safe_exec):
    del settings.CODEJAIL_ENABLED
    assert_json(post(client, {"payload": payload()}), 503)
    safe_exec.assert_not_called()


def test_failed_startup_checks_refuse_execution(client, settings, checks_failed, safe_exec, attributes):
    settings.CODEJAIL_ENABLED = True
    body = assert_json(post(client, {"payload": payload()}), 503)
    assert "startup safety checks" in body["error"]
    safe_exec.assert_not_called()
    assert attributes["codejail_service.status"] == "disabled.startup_checks"


def test_startup_checks_not_run_refuse_execution(client, settings, safe_exec):
    settings.CODEJAIL_ENABLED = True
    assert_json(post(client, {"payload": payload()}), 503)
    safe_exec.assert_not_called()


def test_unenforced_startup_checks_execute_with_a_loud_warning(
    client, settings, checks_failed, safe_exec, attributes, caplog
):
    settings.CODEJAIL_ENABLED = True
    settings.CODEJAIL_ENFORCE_STARTUP_CHECKS = False
    body = assert_json(post(client, {"payload": payload()}), 200)
    assert body == {"globals_dict": {"x": 17}}
    assert "EXECUTING UNCHECKED" in caplog.text
    assert attributes["codejail_service.unchecked_execution"] is True
    assert attributes["codejail_service.status"] == "executed.success"
    # Health still tells the truth.
    assert client.get("/health/").status_code == 503


# --- the status table: 400 for each invalid request ----------------------------------------------


def assert_refused(response, status_slug, attributes, *fragments, safe_exec=None):
    body = assert_json(response, 400)
    assert set(body) == {"error"}
    for fragment in fragments:
        assert fragment in body["error"]
    assert attributes["codejail_service.status"] == status_slug
    if safe_exec is not None:
        safe_exec.assert_not_called()
    return body


def test_missing_payload(client, enabled, safe_exec, attributes):
    response = post(client, {"something": "else"})
    assert_refused(response, "invalid.payload_missing", attributes, "Missing form field 'payload'", safe_exec=safe_exec)


def test_empty_body_is_a_missing_payload(client, enabled, safe_exec, attributes):
    response = client.post(URL)
    assert_refused(response, "invalid.payload_missing", attributes, "'payload'", safe_exec=safe_exec)


def test_payload_given_twice(client, enabled, safe_exec, attributes):
    response = post(client, {"payload": [payload(), payload()]})
    assert_refused(response, "invalid.payload_duplicated", attributes, "more than once", safe_exec=safe_exec)


def test_payload_as_file_upload(client, enabled, safe_exec, attributes):
    response = post(client, {"payload": SimpleUploadedFile("payload", payload().encode())})
    assert_refused(response, "invalid.payload_not_text", attributes, "not a file upload", safe_exec=safe_exec)


def test_payload_not_json(client, enabled, safe_exec, attributes):
    response = post(client, {"payload": "{'code': 'x'}"})
    assert_refused(response, "invalid.payload_json", attributes, "'payload' is not valid JSON", safe_exec=safe_exec)


@pytest.mark.parametrize(
    "raw, where, what",
    [
        ("[]", "$", "is not of type 'object'"),
        ('{"globals_dict": {}}', "$", "'code' is a required property"),
        ('{"code": "x = 1"}', "$", "'globals_dict' is a required property"),
        ('{"code": 5, "globals_dict": {}}', "$.code", "5 is not of type 'string'"),
        ('{"code": "", "globals_dict": []}', "$.globals_dict", "[] is not of type 'object'"),
        ('{"code": "", "globals_dict": {}, "python_path": "python_lib.zip"}', "$.python_path", "is not valid"),
        ('{"code": "", "globals_dict": {}, "python_path": [3]}', "$.python_path[0]", "3 is not of type 'string'"),
        ('{"code": "", "globals_dict": {}, "slug": 12}', "$.slug", "12 is not valid"),
        ('{"code": "", "globals_dict": {}, "limit_overrides_context": []}', "$.limit_overrides_context", "not valid"),
        ('{"code": "", "globals_dict": {}, "unsafely": "no"}', "$.unsafely", "'no' is not of type 'boolean'"),
    ],
)
def test_payload_schema_mismatch_names_the_path(client, enabled, safe_exec, attributes, raw, where, what):
    body = assert_refused(post(client, {"payload": raw}), "invalid.payload_schema", attributes, safe_exec=safe_exec)
    assert body["error"].startswith(f"'payload' does not match the schema at {where}: ")
    assert what in body["error"]


def test_unsafely_true_is_refused(client, enabled, safe_exec, attributes):
    response = post(client, {"payload": payload(unsafely=True)})
    assert_refused(response, "invalid.unsafely", attributes, "'unsafely': true", safe_exec=safe_exec)


def test_unsafely_false_is_accepted(client, enabled, safe_exec):
    assert_json(post(client, {"payload": payload(unsafely=False)}), 200)
    safe_exec.assert_called_once()


@pytest.mark.parametrize(
    "entry", ["/etc/passwd", "../python_lib.zip", "python_lib.zip/../../x", "lib.zip", "", "./python_lib.zip"]
)
def test_python_path_entries_other_than_python_lib_zip_are_refused(
    client, enabled, safe_exec, attributes, caplog, entry
):
    data = {
        "payload": payload(python_path=["python_lib.zip", entry]),
        "python_lib.zip": SimpleUploadedFile("python_lib.zip", b"zip"),
    }
    body = assert_refused(post(client, data), "invalid.python_path", attributes, safe_exec=safe_exec)
    # The reference service's exact words; the entry itself goes to the log only.
    assert body["error"] == "Only allowed entry in 'python_path' is 'python_lib.zip'"
    assert f"python_path entry {entry!r}" in caplog.text


def test_python_path_naming_a_file_that_was_not_uploaded_is_refused(client, enabled, safe_exec, attributes):
    """Else codejail would copy ./python_lib.zip from the web app's own disk."""
    response = post(client, {"payload": payload(python_path=["python_lib.zip"])})
    assert_refused(response, "invalid.file_missing", attributes, "no such file was uploaded", safe_exec=safe_exec)


@pytest.mark.parametrize("name", ["other.zip", "../python_lib.zip", "jailed_code", "python_lib.zip.py"])
def test_uploaded_file_names_other_than_python_lib_zip_are_refused(
    client, enabled, safe_exec, attributes, caplog, name
):
    data = {"payload": payload(), name: SimpleUploadedFile(name, b"data")}
    body = assert_refused(post(client, data), "invalid.file_name", attributes, safe_exec=safe_exec)
    assert body["error"] == "Only allowed name for uploaded file is 'python_lib.zip'"
    assert f"uploaded file name {name!r}" in caplog.text


def test_python_lib_zip_uploaded_without_python_path_is_accepted(client, enabled, safe_exec):
    data = {"payload": payload(), "python_lib.zip": SimpleUploadedFile("python_lib.zip", b"zip")}
    assert_json(post(client, data), 200)
    assert safe_exec.call_args.kwargs["extra_files"] == [("python_lib.zip", b"zip")]


def test_python_lib_zip_uploaded_twice_is_refused(client, enabled, safe_exec, attributes):
    data = {
        "payload": payload(python_path=["python_lib.zip"]),
        "python_lib.zip": [SimpleUploadedFile("python_lib.zip", b"a"), SimpleUploadedFile("python_lib.zip", b"b")],
    }
    assert_refused(post(client, data), "invalid.file_duplicated", attributes, "more than once", safe_exec=safe_exec)


def test_json_body_is_unsupported_media_type(client, enabled, safe_exec):
    body = assert_json(client.post(URL, payload(), content_type="application/json"), 415)
    assert "application/json" in body["error"]
    safe_exec.assert_not_called()


# --- input never mutated --------------------------------------------------------------------------


def test_input_globals_are_not_mutated(enabled, safe_exec):
    """The view hands run_code the parsed payload; run_code must work on a copy."""
    from codejail_service.apps.core.execution import run_code

    nested = {"x": 16, "items": [1, 2]}
    run_code("x = x + 1\nitems.append(3)", nested, run=None)
    assert nested == {"x": 16, "items": [1, 2]}


# --- methods, Accept header ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_other_methods_answer_405_json(client, enabled, safe_exec, method):
    body = assert_json(getattr(client, method)(URL), 405)
    assert method.upper() in body["error"]
    safe_exec.assert_not_called()


def test_answer_is_json_whatever_the_accept_header(client, enabled, safe_exec):
    response = post(client, {"payload": payload()}, HTTP_ACCEPT="text/html")
    assert assert_json(response, 200) == {"globals_dict": {"x": 17}}


# --- overload: 503 + Retry-After --------------------------------------------------------------


def test_request_beyond_capacity_answers_503_with_retry_after(client, enabled, safe_exec, attributes):
    from codejail_service.apps.core.admission import Overloaded

    with mock.patch("codejail_service.apps.api.v0.views.GATE.admit", side_effect=Overloaded("queue_full", 3)):
        response = post(client, {"payload": payload()})
    body = assert_json(response, 503)
    assert response["Retry-After"] == "3"
    assert body == {"error": "The service is at capacity (queue_full); retry in 3 s"}
    assert attributes["codejail_service.status"] == "overloaded"
    safe_exec.assert_not_called()


def test_request_within_capacity_runs_and_gives_the_turn_back(client, enabled, safe_exec):
    from codejail_service.apps.core.admission import GATE

    assert assert_json(post(client, {"payload": payload()}), 200) == {"globals_dict": {"x": 17}}
    with GATE.admit():  # free again: the view released its turn
        pass


def test_invalid_request_is_refused_400_before_admission(client, enabled, safe_exec):
    with mock.patch("codejail_service.apps.api.v0.views.GATE.admit") as admit:
        assert_json(post(client, {"payload": "not json"}), 400)
    admit.assert_not_called()


def test_python_lib_zip_sent_as_a_form_field_is_refused(client, enabled, safe_exec, attributes):
    data = {"payload": payload(), "python_lib.zip": "not a file"}
    assert_refused(post(client, data), "invalid.file_not_upload", attributes, "must be a file upload",
                   safe_exec=safe_exec)


@pytest.mark.parametrize("depth", [101, 5000, 200_000])
def test_payload_nested_too_deeply_is_refused(client, enabled, safe_exec, attributes, depth):
    """Deep nesting would exhaust the stack (in the parser, deepcopy or codejail): a 400, never a 500."""
    nested = "[" * depth + "]" * depth
    data = {"payload": '{"code": "", "globals_dict": {"a": ' + nested + "}}"}
    assert_refused(post(client, data), "invalid.payload_nesting", attributes, "deeper than 100 levels",
                   safe_exec=safe_exec)


def test_payload_nested_to_the_limit_is_accepted(client, enabled, safe_exec):
    nested = "[" * 98 + "]" * 98  # + the payload and globals_dict objects = 100 levels
    assert_json(post(client, {"payload": '{"code": "", "globals_dict": {"a": ' + nested + "}}"}), 200)
    safe_exec.assert_called_once()


def test_nesting_depth():
    from codejail_service.apps.api.v0.views import nesting_depth
    assert [nesting_depth(v) for v in (1, [], {}, [[1], {"a": {"b": []}}], {"a": [1, [2, [3]]]})] == [0, 1, 1, 4, 4]
