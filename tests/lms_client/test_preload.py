"""
The warm sandbox's preload changes nothing a run's code can see (docs/decisions/0007-warm-sandbox.rst):
each module of the zygote's PRELOAD, imported by the zygote before the LMS's prolog, and each of its
HELD packages, imported by the zygote out of sight and handed over at a run's first import of it,
holds what it would hold imported by a fresh interpreter after that prolog; and no two runs forked
from one zygote share a random generator that fresh interpreters would each make their own. With
the sandbox packages of the local codejail (the platform's pins, venvs.LOCAL_VENV) and our
zygote's own code.
"""
import os
import sys

import pytest

from tests.lms_client.preload import differences, shared_generators
from tests.lms_client.venvs import LOCAL_VENV

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from codejail_service.confinement import zygote  # noqa: E402 -- the zygote's own module, as the sandbox runs it

PYTHON = os.path.join(LOCAL_VENV, "bin", "python")


@pytest.mark.parametrize("module", zygote.PRELOAD)
def test_a_preloaded_module_holds_what_it_holds_imported_after_the_prolog(module):
    assert differences(PYTHON, module) == []


@pytest.mark.parametrize("module", zygote.HELD)
def test_a_held_package_holds_what_it_holds_imported_after_the_prolog(module):
    """The run's own random (``seed is random`` in networkx), its methods, no placeholder left alive."""
    assert differences(PYTHON, module) == []


@pytest.mark.parametrize("module", zygote.HELD)
def test_a_held_package_imported_without_the_prolog_comes_from_disk_as_in_a_fresh_interpreter(module):
    assert differences(PYTHON, module, prolog=False) == []


def test_runs_forked_from_one_zygote_share_no_random_generator():
    assert shared_generators(PYTHON) == []


@pytest.mark.parametrize("module", zygote.HELD)
def test_allow_a_held_package_not_handed_the_runs_random_would_differ(module):
    """The allow twin: without the rebinding (the placeholder kept), the probe sees the difference."""
    found = differences(PYTHON, module, rebind=False)
    assert any("the run's random" in str(fresh) for _, fresh, _ in found), found
    assert ("settings placeholder", "none", "alive") in found


@pytest.mark.parametrize("module", zygote.HELD)
def test_allow_a_held_package_preloaded_plainly_would_hold_the_zygotes_random(module):
    """The other twin: imported before the prolog as PRELOAD is, it holds the wrong random."""
    assert module not in zygote.PRELOAD
    found = differences(PYTHON, module, preload=[*zygote.PRELOAD, module], held=[])
    assert any("random" in str(fresh) for _, fresh, _ in found), found
