"""
Robustness suites against the live service (issue 7): API fuzzing from the OpenAPI schema,
property tests, a short soak and (``make test-faults``) fault injection.

They reuse the live suite's fixtures (tests/live/conftest.py): ``service`` starts the real
service on this host as root (or uses ``CODEJAIL_LIVE_URL``), ``run`` posts code as the LMS does.
"""
from live.conftest import pytest_configure, run, service  # noqa: F401 -- fixtures and the marker
