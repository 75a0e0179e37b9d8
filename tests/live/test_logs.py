"""
What a caller sends cannot forge the service's log: a slug with a newline and a terminal escape
sequence ends up escaped inside its own record (codejail_service/log_format.py).
"""
import json
import os
import secrets
import tempfile

import pytest
import requests

SERVICE_LOG = os.path.join(tempfile.gettempdir(), "cjlive-service.log")  # conftest.running_service's


def post_with_slug(service, slug):
    payload = {"code": "x = 1", "globals_dict": {}, "slug": slug}
    response = requests.post(service["url"] + "/api/v0/code-exec", data={"payload": json.dumps(payload)}, timeout=30)
    assert response.status_code == 200 and response.json() == {"globals_dict": {"x": 1}}, response.text
    with open(SERVICE_LOG, encoding="utf-8", errors="replace") as log:
        return log.read().splitlines()


@pytest.mark.outside_layer  # the web app's own logging
def test_deny_forging_a_log_line_through_the_slug(service):
    marker = secrets.token_hex(6)
    lines = post_with_slug(service, f"p1\n2026-12-07 04:00:00,000 ERROR 1 [codejail_service] forged {marker}"
                                    "\x1b[2J")
    if not service["local"]:
        return  # a deployment's log is its own; the unit tests check the formatter it runs
    mentioning = [line for line in lines if marker in line]
    assert mentioning, "the slug was not logged"
    assert not any(line.startswith("2026-12-07 04:00:00,000") for line in lines), mentioning
    assert all("p1\\n2026-12-07" in line and "\\x1b[2J" in line for line in mentioning), mentioning
    assert not any("\x1b" in line for line in lines)


def test_allow_an_ordinary_slug_in_the_log_as_it_is(service):
    slug = f"course-v1:edX+DemoX+{secrets.token_hex(4)} problem é"
    lines = post_with_slug(service, slug)
    if service["local"]:
        assert any(slug in line for line in lines)
