"""Tests of GET /health/."""

import json

import pytest
from django.test import Client

from codejail_service.apps.core import startup_checks
from codejail_service.apps.core.startup_checks import CheckResult


def get_health():
    response = Client().get("/health/")
    assert response["Content-Type"] == "application/json"
    return response.status_code, json.loads(response.content)


def test_health_before_the_checks_ran_is_503_not_run():
    status, body = get_health()
    assert status == 503
    assert {key: body[key] for key in ("status", "execution_enabled", "checks")} == {
        "status": "not_run", "execution_enabled": False, "checks": {}}


def test_health_with_every_check_passed_is_200(checks_passed):
    status, body = get_health()
    assert status == 200
    assert body["status"] == "ok"
    assert body["checks"] == {name: {"passed": True, "reason": None} for name in startup_checks.STARTUP_CHECKS}


def test_health_with_a_failed_check_is_503_and_names_it(checks_failed):
    status, body = get_health()
    assert status == 503
    assert body["status"] == "failed"
    assert body["checks"]["disk_escape"] == {"passed": False, "reason": "sandboxed code was able to list /"}
    assert body["checks"]["basic_execution"] == {"passed": True, "reason": None}


def test_health_shows_check_details(monkeypatch):
    monkeypatch.setattr(
        startup_checks, "_results", {"confinement": CheckResult.ok(layers={"landlock": 7, "seccomp": True})}
    )
    status, body = get_health()
    assert status == 200
    assert body["checks"]["confinement"] == {"passed": True, "reason": None, "layers": {"landlock": 7, "seccomp": True}}


@pytest.mark.parametrize("enabled", [True, False])
def test_health_reports_the_toggle(settings, checks_passed, enabled):
    settings.CODEJAIL_ENABLED = enabled
    assert get_health()[1]["execution_enabled"] is enabled


def test_health_does_not_run_the_checks(monkeypatch):
    """Checks run once at startup (wsgi.py), never per request."""
    monkeypatch.setattr(startup_checks, "STARTUP_CHECKS", {"boom": lambda: pytest.fail("check ran")})
    assert get_health()[0] == 503


def test_health_refuses_post_with_405_json():
    response = Client().post("/health/")
    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert "POST" in json.loads(response.content)["error"]
