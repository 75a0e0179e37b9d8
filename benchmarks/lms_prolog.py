"""
What the LMS puts before every course's code it sends to codejail-service, copied verbatim from
the Open edX LMS's capa ``safe_exec`` (PyPI ``xblocks-contrib`` 0.13.1, for Python 3.11):
``xblocks_contrib/problem/capa/safe_exec/safe_exec.py`` (``CODE_PROLOG``, ``ASSUMED_IMPORTS``,
``LAZY_IMPORTS``) and ``lazymod.py`` (the text ``LAZY_IMPORTS`` starts with).

xblocks-contrib is licensed under the GNU Affero General Public License v3 or later (AGPLv3+),
(c) the Open edX Project (oscm@openedx.org) and contributors; lazymod.py says it is
in the public domain. Only the strings below are copied, for benchmarks/bench.py to wrap code
exactly as the LMS does: ``CODE_PROLOG % random_seed + LAZY_IMPORTS + code``. To refresh them:
``pip download --no-deps xblocks-contrib==<version>`` and copy the same parts again.
"""

CODE_PROLOG = """\
from __future__ import absolute_import, division

import os

# openblas is a math library used by numpy. It will try to allocate multiple
# threads by default, but this may exceed resource limits and cause a segfault.
# Limiting to 1 thread will prevent this in all configurations.
os.environ["OPENBLAS_NUM_THREADS"] = "1"

# Any code that uses the tempfile module to create temporary files should use
# the ./tmp directory that codejail creates in each sandbox, rather than trying
# to use a global temp dir (which should be blocked by AppArmor anyhow).
# This is needed for matplotlib among other things.
#
# matplotlib will complain on stderr about the non-standard temp dir if we
# don't explicitly tell it "no really, use this". This pollutes the output
# when codejail returns an error message (which includes stderr). So we also
# set MPLCONFIGDIR as a special case.
os.environ["TMPDIR"] = os.getcwd() + "/tmp"
os.environ["MPLCONFIGDIR"] = os.environ["TMPDIR"]

import random2 as random_module
import sys
from six.moves import xrange

random = random_module.Random(%r)
random.Random = random_module.Random
random.SystemRandom = random_module.SystemRandom
sys.modules['random'] = random
"""

ASSUMED_IMPORTS = [
    ("numpy", "numpy"),
    ("math", "math"),
    ("scipy", "scipy"),
    ("calc", "calc"),
    ("eia", "eia"),
    ("chemcalc", "chem.chemcalc"),
    ("chemtools", "chem.chemtools"),
    ("miller", "chem.miller"),
    ("draganddrop", "verifiers.draganddrop"),
]

LAZYMOD_PY = '''\
"""A module proxy for delayed importing of modules.

From http://barnesc.blogspot.com/2006/06/automatic-python-imports-with-autoimp.html,
in the public domain.

"""

import sys


class LazyModule:
    """A lazy module proxy."""

    def __init__(self, modname):
        self.__dict__["__name__"] = modname
        self._set_mod(None)

    def _set_mod(self, mod):
        if mod is not None:
            self.__dict__ = mod.__dict__
        self.__dict__["_lazymod_mod"] = mod

    def _load_mod(self):
        __import__(self.__name__)
        self._set_mod(sys.modules[self.__name__])

    def __getattr__(self, name):
        if self.__dict__["_lazymod_mod"] is None:
            self._load_mod()

        mod = self.__dict__["_lazymod_mod"]

        if hasattr(mod, name):
            return getattr(mod, name)

        try:
            subname = f"{self.__name__}.{name}"
            __import__(subname)
            submod = getattr(mod, name)  # pylint: disable=unused-variable
        except ImportError as exc:
            raise AttributeError(f"'module' object has no attribute {name!r}") from exc
        self.__dict__[name] = LazyModule(subname)
        return self.__dict__[name]
'''

LAZY_IMPORTS = LAZYMOD_PY + "".join(f"{name} = LazyModule('{modname}')\n" for name, modname in ASSUMED_IMPORTS)


def wrap(code, random_seed=1234):
    """``code`` as the LMS sends it (capa safe_exec, with the REST service enabled)."""
    return CODE_PROLOG % random_seed + LAZY_IMPORTS + code
