"""
The LMS's own codejail client against the live service (make test-lms-client, as root).

The client is xblocks-contrib's capa ``safe_exec`` (``xblocks_contrib.problem.capa.safe_exec``), the
code the LMS runs for every Python-evaluated problem, installed in its own venv
(``.cache/venv-lms-client``, from ``requirements/lms-client.txt``) and configured only through the
Django settings the LMS sets: nothing of it is patched.

- REST mode (``ENABLE_CODEJAIL_REST_SERVICE``): every run goes to the service started by
  tests/live/conftest.py (the warm sandbox, the default, or fresh interpreters with ``CODEJAIL_LIVE_WARM=0``).
- Darklaunch mode (``ENABLE_CODEJAIL_DARKLAUNCH``): the client runs the code in a local codejail
  *and* in the service, and compares the two after its ``normalize_error_message``; it reports the
  comparison as telemetry custom attributes, which ``telemetry.RecordingBackend`` keeps. The local
  codejail is codejail as an LMS host runs it: run directories ``/tmp/codejail-XXXX``, the code run
  by ``sudo -u <sandbox user>``, the service's default limits, and the packages an LMS host has: a
  ``--copies`` venv of the Open edX platform's own current pins (``make test-lms-client`` builds it
  once per pins under .cache/, ``CODEJAIL_LMS_LOCAL_VENV``), not the service's set; tracebacks through
  its packages name its path, which the client's ``CODEJAIL_DARKLAUNCH_EMSG_NORMALIZERS`` maps to the
  service's venv, as the setting's own documentation tells a deployer to.
"""
import json
import os
import re
import subprocess
import sys

import django
import pytest
from django.conf import settings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from tests.live.conftest import (  # noqa: E402 -- the live suite's service, started the same way
    SANDBOX_USER,
    WARM,
    _no_processes_from_earlier_tests,  # noqa: F401 -- autouse fixture
    running_service,
)
from tests.lms_client.corpus import HEAVY_COURSE  # noqa: E402
from tests.lms_client.venvs import LOCAL_VENV, SERVICE_SANDBOX_VENV  # noqa: E402

# The LMS's settings for its client (lms/envs/common.py defaults), the service's host set below.
settings.configure(
    ENABLE_CODEJAIL_REST_SERVICE=True,
    ENABLE_CODEJAIL_DARKLAUNCH=False,
    CODE_JAIL_REST_SERVICE_HOST="http://127.0.0.1:8550",
    CODE_JAIL_REST_SERVICE_REMOTE_EXEC="xblocks_contrib.problem.capa.safe_exec.remote_exec.send_safe_exec_request_v0",
    CODE_JAIL_REST_SERVICE_CONNECT_TIMEOUT=0.5,
    CODE_JAIL_REST_SERVICE_READ_TIMEOUT=3.5,
    OPENEDX_TELEMETRY=["tests.lms_client.telemetry.RecordingBackend"],
    CODEJAIL_DARKLAUNCH_EMSG_NORMALIZERS=[{"search": re.escape(LOCAL_VENV), "replace": SERVICE_SANDBOX_VENV}],
    USE_I18N=False,
)
django.setup()

# The service's default limits (codejail_service/settings/base.py), so both arms limit alike; and
# one course's override, as an operator gives it to the LMS and the service alike: matplotlib and
# chemcalc cost about 1 s of CPU per run (corpus.HEAVY_COURSE).
LIMITS = {"CPU": 1, "REALTIME": 3, "VMEM": 512 * 1024 * 1024, "FSIZE": 1024 * 1024, "NPROC": 15, "PROXY": 0}
OVERRIDES = {HEAVY_COURSE: {"CPU": 2}}


@pytest.fixture(scope="session")
def service():
    """The live suite's service, with the same limits and overrides as the local codejail."""
    code_jail = {"python_bin": f"{SERVICE_SANDBOX_VENV}/bin/python", "user": SANDBOX_USER,
                 "limits": LIMITS, "limit_overrides": OVERRIDES}
    with running_service([f"CODE_JAIL: {json.dumps(code_jail)}"]) as started:
        yield started


@pytest.fixture(scope="session", autouse=True)
def lms_client(service):
    """The client, pointed at the service."""
    settings.CODE_JAIL_REST_SERVICE_HOST = service["url"]
    from xblocks_contrib.problem.capa.safe_exec import safe_exec  # after the settings
    return safe_exec


@pytest.fixture(scope="session")
def local_codejail():
    """codejail in this process, as on an LMS host: the platform's venv's python run as the sandbox user by sudo."""
    from codejail import jail_code

    python = os.path.join(LOCAL_VENV, "bin", "python")
    readable = subprocess.run(["sudo", "-u", SANDBOX_USER, python, "-c", "import numpy"],
                              capture_output=True, check=False)
    assert readable.returncode == 0, f"the sandbox user cannot run {python}: {readable.stderr[-500:]!r}"
    jail_code.configure("python", python, user=SANDBOX_USER)
    for name, value in LIMITS.items():
        jail_code.set_limit(name, value)
    for context, overrides in OVERRIDES.items():
        for name, value in overrides.items():
            jail_code.override_limit(name, value, context)
    return LOCAL_VENV


@pytest.fixture
def darklaunch(local_codejail):
    """The client in darklaunch mode; yields the telemetry attributes it records."""
    from django.test import override_settings

    from tests.lms_client.telemetry import ATTRIBUTES

    ATTRIBUTES.clear()
    with override_settings(ENABLE_CODEJAIL_REST_SERVICE=False, ENABLE_CODEJAIL_DARKLAUNCH=True):
        yield ATTRIBUTES


def pytest_report_header(config):
    return f"lms client against the service with {'the warm sandbox' if WARM else 'fresh interpreters'}"
