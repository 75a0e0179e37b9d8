"""wsgi.py runs the startup checks once after building the app; gunicorn's config reads the env."""

import importlib
import sys

import pytest

from codejail_service.apps.core import startup_checks
from codejail_service.apps.core.startup_checks import CheckResult


def test_wsgi_builds_the_application_then_runs_the_startup_checks(monkeypatch):
    calls = []
    monkeypatch.setattr(startup_checks, "STARTUP_CHECKS", {"probe": lambda *run: calls.append(1) or CheckResult.ok()})
    monkeypatch.delitem(sys.modules, "codejail_service.wsgi", raising=False)
    wsgi = importlib.import_module("codejail_service.wsgi")
    assert callable(wsgi.application)
    assert calls == [1]
    assert startup_checks.get_startup_check_results() == {"probe": CheckResult.ok()}


def test_wsgi_imports_the_urlconf_before_any_request(monkeypatch):
    """So that gunicorn's master (preload) imports it once for every worker."""
    from django.urls import clear_url_caches, get_resolver

    monkeypatch.setattr(startup_checks, "STARTUP_CHECKS", {})
    monkeypatch.delitem(sys.modules, "codejail_service.wsgi", raising=False)
    monkeypatch.delitem(sys.modules, "codejail_service.urls", raising=False)
    clear_url_caches()  # a fresh resolver, whose url_patterns nothing has asked for yet
    importlib.import_module("codejail_service.wsgi")
    assert "codejail_service.urls" in sys.modules
    assert "url_patterns" in vars(get_resolver())  # the cached_property was filled


def test_startup_checks_do_not_run_on_settings_or_app_import():
    """Tests (and management commands) set Django up without running any check."""
    assert startup_checks.get_startup_check_results() is None


@pytest.fixture
def gunicorn_config(monkeypatch):
    def load(**env):
        for name in ("CODEJAIL_SERVICE_BIND", "CODEJAIL_SERVICE_WORKERS", "CODEJAIL_SERVICE_TIMEOUT",
                     "CODEJAIL_SERVICE_THREADS", "CODEJAIL_SERVICE_RECEIVE_TIMEOUT"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delitem(sys.modules, "codejail_service.gunicorn_config", raising=False)
        return importlib.import_module("codejail_service.gunicorn_config")

    return load


def test_gunicorn_defaults(gunicorn_config, monkeypatch):
    monkeypatch.setattr("multiprocessing.cpu_count", lambda: 3)
    config = gunicorn_config()
    assert config.bind == "127.0.0.1:8550"
    assert config.workers == 6
    # Threads hold the requests waiting for a sandbox slot (apps/core/admission.py); they take
    # only requests that have fully arrived (gunicorn_worker.py).
    assert (config.worker_class, config.threads) == ("codejail_service.gunicorn_worker.ReceivingThreadWorker", 16)
    assert config.receive_timeout == 20
    assert config.preload_app is True
    assert config.max_requests > 0 and config.max_requests_jitter > 0
    assert config.accesslog == "-" and config.errorlog == "-"
    assert config.timeout > 3  # above codejail's REALTIME limit


def test_gunicorn_environment_overrides(gunicorn_config):
    config = gunicorn_config(CODEJAIL_SERVICE_BIND="0.0.0.0:9000", CODEJAIL_SERVICE_WORKERS="3",
                             CODEJAIL_SERVICE_TIMEOUT="12", CODEJAIL_SERVICE_THREADS="5",
                             CODEJAIL_SERVICE_RECEIVE_TIMEOUT="7.5")
    assert (config.bind, config.workers, config.timeout, config.threads) == ("0.0.0.0:9000", 3, 12, 5)
    assert config.receive_timeout == 7.5
