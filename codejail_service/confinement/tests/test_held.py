"""
The zygote's held packages (confinement/held.py): imported after a placeholder of the LMS prolog's
``random``, out of sight, handed to a run at its first import with that run's ``random`` in every
place the placeholder was. Each test runs in a forked child (sys.modules and sys.meta_path are the
process's own), with a stand-in for random2 and small packages written for the test.
"""
import importlib
import importlib.util
import random
import sys
import textwrap
import types
import warnings
import weakref

import pytest

from codejail_service.confinement import held

from .conftest import in_child

# Every kind of place a module can keep the prolog's random or one of its methods in.
HOLDER = """
import functools, random, warnings
from random import choice
from . import child
warnings.simplefilter("once", DeprecationWarning)
rng = random.Random()
listed = [random]
def default(r=random):
    return r
def keyword(*, r=random):
    return r
def closure():
    return random
class Holder:
    kept = random
    def __init__(self):
        self.mine = random
instance = Holder()
"""


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """Write ``{dotted name: source}`` as packages under tmp_path, importable."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(sources):
        for name, source in sources.items():
            parts = name.split(".")
            folder = tmp_path.joinpath(*parts)
            folder.mkdir(parents=True, exist_ok=True)
            folder.joinpath("__init__.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return tmp_path

    return write


def stand_in_random2():
    """A module shaped as random2 (its Random a stdlib Random's subclass, as random2's is)."""
    module = types.ModuleType("random2")

    class Random(random.Random):
        pass

    class SystemRandom(random.SystemRandom):
        pass

    module.Random, module.SystemRandom = Random, SystemRandom
    return module


def prolog(random2, seed=5):
    """What the LMS prolog does with random."""
    run_random = random2.Random(seed)
    run_random.Random, run_random.SystemRandom = random2.Random, random2.SystemRandom
    sys.modules["random"] = run_random
    return run_random


def hold(names, random2=None, prepare=importlib.import_module):
    """held.hold with the stand-in random2; (finder, what it logged)."""
    sys.modules["random2"] = random2 or stand_in_random2()
    logged = []
    return held.hold(names, prepare, log=logged.append), logged


def test_a_held_package_is_out_of_sight_until_imported_then_holds_the_runs_random(packages):
    packages({"holder": HOLDER, "holder.child": "VALUE = 1\n"})

    def child():
        finder, logged = hold(["holder"])
        out_of_sight = ("holder" not in sys.modules and "holder.child" not in sys.modules
                        and sys.meta_path[0] is finder and not any(f[2] is DeprecationWarning and f[0] == "once"
                                                                    for f in warnings.filters))
        stashed = finder.modules["holder"]
        spec = stashed.__spec__
        before = stashed.rng.getstate()
        placeholder = weakref.ref(finder.placeholder)
        run_random = prolog(sys.modules["random2"])
        import holder
        places = [holder.random, holder.listed[0], holder.default(), holder.keyword(), holder.closure(),
                  holder.Holder.kept, holder.instance.mine]
        return {"logged": logged, "out_of_sight": out_of_sight, "same_module": holder is stashed,
                "spec": holder.__spec__ is spec, "places": all(place is run_random for place in places),
                "method": holder.choice == run_random.choice, "reseeded": holder.rng.getstate() != before,
                "placeholder_gone": placeholder() is None, "finder_gone": finder not in sys.meta_path,
                "child": holder.child is sys.modules["holder.child"],
                "filter": any(f[2] is DeprecationWarning and f[0] == "once" for f in warnings.filters)}

    value, status = in_child(child)
    assert status == 0 and value == {"logged": [], "out_of_sight": True, "same_module": True, "spec": True,
                                     "places": True, "method": True, "reseeded": True,
                                     "placeholder_gone": True, "finder_gone": True, "child": True,
                                     "filter": True}, value


def test_a_held_child_of_a_module_in_sight_is_no_attribute_of_it_until_imported(packages):
    packages({"parent": "", "parent.heldchild": "import random\n"})

    def child():
        import parent
        hold(["parent.heldchild"])
        hidden = not hasattr(parent, "heldchild")
        run_random = prolog(sys.modules["random2"])
        import parent.heldchild
        return hidden, parent.heldchild.random is run_random

    assert in_child(child) == ([True, True], 0)


def test_without_the_prologs_random_a_held_package_is_imported_from_disk(packages):
    packages({"holder": HOLDER, "holder.child": "VALUE = 1\n"})

    def child():
        finder, _ = hold(["holder"])
        stashed = finder.modules["holder"]
        import holder
        return holder is not stashed, holder.random is random, finder not in sys.meta_path

    assert in_child(child) == ([True, True, True], 0)


def test_a_courses_own_copy_first_on_the_path_is_imported_instead_of_the_held_one(packages, tmp_path):
    packages({"holder": HOLDER, "holder.child": "VALUE = 1\n"})

    def child():
        finder, _ = hold(["holder"])
        course = tmp_path / "course" / "holder"
        course.mkdir(parents=True)
        (course / "__init__.py").write_text("COURSE = True\n")
        sys.path.insert(0, str(tmp_path / "course"))
        importlib.invalidate_caches()
        prolog(sys.modules["random2"])
        import holder
        return getattr(holder, "COURSE", False), finder not in sys.meta_path

    assert in_child(child) == ([True, True], 0)


def test_found_but_not_loaded_a_held_package_is_still_handed_over_whole(packages):
    packages({"holder": HOLDER, "holder.child": "VALUE = 1\n"})

    def child():
        finder, _ = hold(["holder"])
        stashed = finder.modules["holder"]
        run_random = prolog(sys.modules["random2"])
        found = importlib.util.find_spec("holder") is not None
        import holder
        return found, holder is stashed, holder.random is run_random, finder not in sys.meta_path

    assert in_child(child) == ([True, True, True, True], 0)


@pytest.mark.parametrize(("source", "said"), [
    ("import random\nrandom.random()\n", "drew from the prolog's random"),
    ("import sys\nsys.flags_seen = 1\n", "changed what loaded modules hold: sys.flags_seen"),
    ("import os\nos.environ['HELD_TEST'] = '1'\n", "changed the environment"),
    ("import warnings\nwarnings.resetwarnings()\n", "removed or reordered warnings filters"),
])
def test_deny_an_import_that_cannot_be_replayed_is_not_held_and_comes_from_disk(packages, source, said):
    packages({"unfit": source, "fit": "import random\n"})

    def child():
        finder, logged = hold(["unfit", "fit"])
        run_random = prolog(sys.modules["random2"])
        import fit
        import unfit
        return (logged, "unfit" in finder.modules, fit is finder.modules.get("fit") or fit.random is run_random,
                unfit.random is run_random if hasattr(unfit, "random") else None)

    (logged, kept, fit_held, _), status = in_child(child)
    assert status == 0 and not kept and fit_held
    assert len(logged) == 1 and logged[0].startswith("not holding unfit:") and said in logged[0], logged


def test_allow_an_import_that_only_reads_the_prologs_random_is_held(packages):
    packages({"reader": "import random\nKIND = type(random).__name__\n"})

    def child():
        finder, logged = hold(["reader"])
        return logged, "reader" in finder.modules

    assert in_child(child) == ([[], True], 0)


@pytest.mark.parametrize("source", [
    "import functools, random\nchoose = functools.partial(random.choice)\n",
    "import random\nPAIR = (random, 1)\n",
])
def test_deny_a_place_that_cannot_be_rebound_holds_nothing(packages, source):
    packages({"odd": source})

    def child():
        finder, logged = hold(["odd"])
        return finder is None, "odd" in sys.modules, logged

    (nothing, in_sight, logged), status = in_child(child)
    assert status == 0 and nothing and not in_sight
    assert logged and logged[0].startswith("not holding odd: a "), logged


def test_without_random2_or_names_nothing_is_held():
    def child():
        sys.modules.pop("random2", None)
        return held.hold(["anything"], importlib.import_module) is None, held.hold([], importlib.import_module)

    assert in_child(child) == ([True, None], 0)


def test_the_prolog_shape_is_told_by_exact_types_only():
    random2 = stand_in_random2()
    shaped = random2.Random(1)
    shaped.Random, shaped.SystemRandom = random2.Random, random2.SystemRandom
    plain = random2.Random(1)
    sub = type("Sub", (random2.Random,), {})(1)
    sub.Random, sub.SystemRandom = random2.Random, random2.SystemRandom
    assert held.prolog_shaped(shaped, random2)
    assert not held.prolog_shaped(plain, random2)
    assert not held.prolog_shaped(sub, random2)
    assert not held.prolog_shaped(random, random2)
