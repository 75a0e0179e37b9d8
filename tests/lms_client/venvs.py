"""The two sandboxes the darklaunch compares: the service's venv, and the local codejail's (the platform's pins)."""
import os

import pytest

SERVICE_SANDBOX_VENV = "/opt/codejail-service/sandbox-venv"
LOCAL_VENV = os.environ.get("CODEJAIL_LMS_LOCAL_VENV") or pytest.fail(
    "CODEJAIL_LMS_LOCAL_VENV: the local codejail's venv (make test-lms-client builds it)", pytrace=False)
