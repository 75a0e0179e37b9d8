"""Fixtures shared by the unit tests."""

import pytest

from codejail_service.apps.core import startup_checks
from codejail_service.apps.core.startup_checks import CheckResult


@pytest.fixture(autouse=True)
def fresh_startup_checks():
    """Every test starts with the startup checks not yet run, and leaves them so."""
    startup_checks.reset_startup_checks()
    yield
    startup_checks.reset_startup_checks()


@pytest.fixture
def checks_passed(monkeypatch):
    """Cached startup-check results in which every check passed."""
    results = {name: CheckResult.ok() for name in startup_checks.STARTUP_CHECKS}
    monkeypatch.setattr(startup_checks, "_results", results)
    return results


@pytest.fixture
def checks_failed(monkeypatch):
    """Cached startup-check results in which disk_escape failed."""
    results = {name: CheckResult.ok() for name in startup_checks.STARTUP_CHECKS}
    results["disk_escape"] = CheckResult.fail("sandboxed code was able to list /")
    monkeypatch.setattr(startup_checks, "_results", results)
    return results


@pytest.fixture
def enabled(settings, checks_passed):
    """Execution switched on and the startup checks passed: requests reach safe_exec."""
    settings.CODEJAIL_ENABLED = True
    return settings
