"""Fixtures shared by the unit tests."""

import os
import shutil
import subprocess

import pytest

from codejail_service.apps.core import startup_checks
from codejail_service.apps.core.startup_checks import CheckResult


@pytest.fixture(autouse=True)
def fresh_startup_checks():
    """Every test starts with the startup checks not yet run, and leaves them so."""
    startup_checks.reset_startup_checks()
    yield
    startup_checks.reset_startup_checks()


# Programs a fresh machine does not have until provisioning installs them, and which a unit test
# must not need: the real path through them is the live suite's (tests/live/).
HOST_ONLY_PROGRAMS = {"sudo", "apparmor_parser", "nft"}
SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/")


@pytest.fixture(autouse=True)
def no_host_programs(monkeypatch):
    """A unit test that starts sudo (or another provisioned program) fails, on every machine."""
    real_init = subprocess.Popen.__init__

    def refuse_host_programs(self, args, *rest, **kwargs):
        program = os.fsdecode(args if isinstance(args, (str, bytes)) else args[0])
        env_path = (kwargs.get("env") or os.environ).get("PATH")
        found = shutil.which(program, path=env_path)
        # A test's own stand-in (a script in its tmp_path, first on PATH) is fine; the system's is not.
        if os.path.basename(program) in HOST_ONLY_PROGRAMS and (found is None or found.startswith(SYSTEM_DIRS)):
            raise AssertionError(f"a unit test ran {program!r}: mock it, or test it in tests/live/")
        real_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse_host_programs)


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
