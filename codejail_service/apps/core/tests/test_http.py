"""The request size cap and the JSON error pages (400, 404, 411, 413, 500)."""

import io
import json
from unittest import mock

import pytest
from django.test import Client, RequestFactory

from codejail_service.apps.core import errors
from codejail_service.apps.core.middleware import RequestSizeLimitMiddleware

URL = "/api/v0/code-exec"


def assert_json_error(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert set(body) == {"error"}
    return body["error"]


class UnreadableStream(io.RawIOBase):
    """A request body that fails the test if anything reads it."""

    def read(self, *args):
        pytest.fail("the request body was read")

    readline = readinto = read


def request_with_unreadable_body(**meta):
    request = RequestFactory().post(URL, data=b"", content_type="multipart/form-data; boundary=x")
    request.META.update(meta)
    request.META["wsgi.input"] = UnreadableStream()
    request._stream = UnreadableStream()
    return request


@pytest.fixture
def middleware():
    inner = mock.Mock(return_value="passed on")
    return RequestSizeLimitMiddleware(inner), inner


def test_oversize_content_length_is_refused_with_413_without_reading(settings, middleware):
    settings.CODEJAIL_MAX_REQUEST_BYTES = 1000
    handler, inner = middleware
    with mock.patch("codejail_service.apps.core.middleware.set_custom_attribute") as set_attribute:
        response = handler(request_with_unreadable_body(CONTENT_LENGTH="1001"))
    error = assert_json_error(response, 413)
    assert error == "Request body of 1001 bytes exceeds the limit of 1000 bytes"
    inner.assert_not_called()
    set_attribute.assert_called_once_with("codejail_service.status", "invalid.request_size")


def test_content_length_at_the_limit_is_passed_on(settings, middleware):
    settings.CODEJAIL_MAX_REQUEST_BYTES = 1000
    handler, inner = middleware
    assert handler(request_with_unreadable_body(CONTENT_LENGTH="1000")) == "passed on"


def test_the_default_limit_is_ten_mebibytes(settings, middleware):
    handler, inner = middleware
    assert settings.CODEJAIL_MAX_REQUEST_BYTES == 10 * 1024 * 1024
    assert handler(request_with_unreadable_body(CONTENT_LENGTH=str(10 * 1024 * 1024))) == "passed on"
    assert_json_error(handler(request_with_unreadable_body(CONTENT_LENGTH=str(10 * 1024 * 1024 + 1))), 413)


def test_chunked_body_is_refused_with_411(middleware):
    handler, inner = middleware
    request = request_with_unreadable_body(HTTP_TRANSFER_ENCODING="chunked")
    request.META.pop("CONTENT_LENGTH", None)
    assert "Content-Length" in assert_json_error(handler(request), 411)
    inner.assert_not_called()


@pytest.mark.parametrize("declared", ["ten", "-5"])
def test_unreadable_content_length_is_refused_with_400(middleware, declared):
    handler, inner = middleware
    error = assert_json_error(handler(request_with_unreadable_body(CONTENT_LENGTH=declared)), 400)
    assert repr(declared) in error
    inner.assert_not_called()


def test_request_without_a_body_is_passed_on(middleware):
    handler, inner = middleware
    request = RequestFactory().get("/health/")
    request.META.pop("CONTENT_LENGTH", None)
    assert handler(request) == "passed on"


def test_oversize_upload_through_the_whole_stack(settings, enabled):
    settings.CODEJAIL_MAX_REQUEST_BYTES = 2048
    with mock.patch("codejail_service.apps.core.execution.safe_exec") as safe_exec:
        response = Client().post(URL, {"payload": "{}", "python_lib.zip": io.BytesIO(b"x" * 4096)})
    assert "exceeds the limit of 2048 bytes" in assert_json_error(response, 413)
    safe_exec.assert_not_called()


def test_unknown_path_is_404_json():
    assert assert_json_error(Client().get("/api/v0/nothing-here"), 404) == "Not found: /api/v0/nothing-here"


def test_code_exec_with_trailing_slash_is_404_json():
    assert_json_error(Client().post(URL + "/"), 404)


def test_disallowed_host_is_400_json(settings):
    settings.ALLOWED_HOSTS = ["codejail.internal"]
    error = assert_json_error(Client().get("/health/", HTTP_HOST="evil.example"), 400)
    assert "evil.example" in error


def test_too_many_form_fields_is_400_json(enabled):
    data = {f"field{i}": "v" for i in range(50)}
    with mock.patch("codejail_service.apps.core.execution.safe_exec") as safe_exec:
        response = Client().post(URL, data)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    safe_exec.assert_not_called()


def test_unhandled_exception_is_500_json():
    with mock.patch("codejail_service.apps.core.views.get_startup_check_results", side_effect=RuntimeError("bug")):
        response = Client(raise_request_exception=False).get("/health/")
    error = assert_json_error(response, 500)
    assert "bug" not in error


def test_403_handler_answers_json():
    assert assert_json_error(errors.permission_denied(RequestFactory().get("/")), 403) == "Forbidden"


def test_400_handler_without_a_reason():
    assert assert_json_error(errors.bad_request(RequestFactory().get("/")), 400) == "Bad request: Bad request"
