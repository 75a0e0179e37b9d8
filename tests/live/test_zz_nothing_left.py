"""Runs last (file order): the suite left no run directory and no sandbox process behind."""
import time

import pytest

from .aftermath import run_dirs
from .conftest import sandbox_processes


def test_support_nothing_left_behind(run, service):
    if not service["local"]:
        pytest.skip("the host's /tmp and processes can only be checked where the service runs")
    run("r = 1")  # a last normal run
    deadline = time.monotonic() + 10
    while (run_dirs() or sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_dirs() == set()
    assert sandbox_processes() == []
