"""
The warm sandbox's preload changes nothing a run's code can see (docs/decisions/0007-warm-sandbox.rst):
each module of the zygote's PRELOAD, imported by the zygote before the LMS's prolog, holds what it
would hold imported by a fresh interpreter after it; and no two runs forked from one zygote share
a random generator that fresh interpreters would each make their own. With the sandbox packages
of the local codejail (the platform's pins, venvs.LOCAL_VENV) and our zygote's own code.
"""
import os
import sys

import pytest

from tests.lms_client.preload import differences, shared_generators
from tests.lms_client.venvs import LOCAL_VENV

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "codejail_service", "confinement"))
import zygote  # noqa: E402 -- the zygote's own module, as the sandbox runs it

PYTHON = os.path.join(LOCAL_VENV, "bin", "python")


@pytest.mark.parametrize("module", zygote.PRELOAD)
def test_a_preloaded_module_holds_what_it_holds_imported_after_the_prolog(module):
    assert differences(PYTHON, module) == []


def test_runs_forked_from_one_zygote_share_no_random_generator():
    assert shared_generators(PYTHON) == []


@pytest.mark.parametrize("module", ["sympy", "networkx", "chem.chemcalc"])
def test_a_module_left_out_of_the_preload_would_hold_the_zygotes_random(module):
    """The allow twin: the probe sees what made these modules unfit to preload."""
    assert module not in zygote.PRELOAD
    assert any("random" in str(fresh) for _, fresh, _ in differences(PYTHON, module, preload=(*zygote.PRELOAD, module)))
