"""
What a module holds once a course's code has started, imported the way a fresh sandbox run imports
it or the way the warm sandbox's zygote does (test_preload.py runs this with the sandbox
packages' python, in a run directory of its own):

    preload_probe.py fresh MODULE SEED   the LMS's prolog, then ``import MODULE`` (a fresh run)
    preload_probe.py fresh-noprolog MODULE SEED   the same without the prolog (code sent without it)
    preload_probe.py warm MODULE SEED [LOADED [OPTIONS]]
                                         the zygote's preload (PRELOAD and HELD) and what its forked
                                         run does before the code, then the prolog, then the import;
                                         only the modules LOADED (a JSON list) compared. OPTIONS, a
                                         JSON object: "preload" and "held" (lists: instead of PRELOAD
                                         and HELD), "rebind": false (the held modules keep the
                                         placeholder: the allow twin), "prolog": false, "only_new":
                                         true (compare only what the import itself loaded)
    preload_probe.py rngs                the state of every random generator a module holds at
                                         module level after the zygote's preload and a forked run's
                                         start, the prolog and the import of HELD, in two forked
                                         runs (and, with ``fresh``, in this interpreter after the
                                         prolog and importing PRELOAD and HELD plainly)

It prints one JSON line last: for every module of MODULE's package that the fresh import loaded,
each module-level value that can differ with the order of import and prolog, described without
addresses: a reference to the run's own ``random`` (the prolog's per-run instance), to a module, to
an object of random or random2, and any string (also in a list, tuple or dict) naming the run
directory, a temporary directory or matplotlib's caches; and what the environment, ``tempfile`` and
matplotlib's configuration directories say then; for a held package, also whether the zygote's
placeholder of the prolog's ``random`` is still alive and its finder still in ``sys.meta_path``.
"""
import hashlib
import importlib
import json
import os
import sys
import types
import weakref

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, REPO)

import lms_prolog  # noqa: E402 -- the LMS's prolog, verbatim

from codejail_service.confinement import held as held_module  # noqa: E402 -- the zygote's own
from codejail_service.confinement import zygote  # noqa: E402 -- preload() and fresh_state(), as the sandbox runs them

RUN_DIR = os.getcwd()
PROLOG_ENV = ("OPENBLAS_NUM_THREADS", "TMPDIR", "MPLCONFIGDIR", "MPLBACKEND", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
RANDOM_MODULES = ("random", "random2", "_random")
INTERESTING = (RUN_DIR, "/tmp", "matplotlib", "codejail")


def run_prolog(seed):
    exec(compile(lms_prolog.CODE_PROLOG % seed, "<prolog>", "exec"), {"__name__": "__main__"})  # noqa: S102


# A weak reference to the held packages' placeholder of the prolog's random (warm_start).
PLACEHOLDER = None


def quiet_preload(names=zygote.PRELOAD, held=zygote.HELD, rebind=True):
    """
    The zygote's preload (PRELOAD, then HELD out of sight), which says "ready" on fd 1: not into
    our JSON. ``rebind`` False: the held modules are handed back holding the placeholder.
    """
    global PLACEHOLDER
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        zygote.preload(names, held)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    finder = sys.meta_path[0]
    if isinstance(finder, held_module.Finder):
        PLACEHOLDER = weakref.ref(finder.placeholder)
        if not rebind:
            finder.references = []


def warm_start(options):
    """The zygote: its preload; then, as its forked run: the run's environment and state."""
    run_env = dict(os.environ)
    quiet_preload(options.get("preload", zygote.PRELOAD), options.get("held", zygote.HELD),
                  options.get("rebind", True))
    os.environ.clear()
    os.environ.update(run_env, TMPDIR="tmp")
    zygote.fresh_state()


def describe(value, run_random, depth=0):
    """A description that is the same for the same meaning, or None if nothing to compare."""
    if value is run_random:
        return "the run's random (the prolog's instance)"
    if isinstance(value, types.ModuleType):  # what ``import random`` gave it
        return f"module {value.__name__}" if value.__name__ in RANDOM_MODULES else None
    if isinstance(value, type):  # ``from random import Random``: the prolog sets random2's there
        return f"class {value.__module__}.{value.__qualname__}" if value.__module__ in RANDOM_MODULES else None
    if isinstance(value, str):
        return value.replace(RUN_DIR, "<RUN>") if any(part in value for part in INTERESTING) else None
    if depth < 2 and isinstance(value, (list, tuple)):
        inner = [describe(item, run_random, depth + 1) for item in value]
        return inner if any(item is not None for item in inner) else None
    if depth < 2 and isinstance(value, dict):
        inner = {str(key): describe(item, run_random, depth + 1) for key, item in value.items()}
        inner = {key: item for key, item in inner.items() if item is not None}
        return inner or None
    owner = getattr(value, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType) and depth < 2:
        inner = describe(owner, run_random, depth + 1)
        return f"method {getattr(value, '__name__', '?')} of {inner}" if inner else None
    cls = type(value)
    if cls.__module__ in RANDOM_MODULES:
        return f"{cls.__module__}.{cls.__qualname__} object"
    return None


def namespace(loaded):
    run_random = sys.modules.get("random")
    found = {}
    for name in sorted(loaded):
        module = sys.modules.get(name)
        if not isinstance(module, types.ModuleType) or name == "__main__":
            continue
        for key, value in list(vars(module).items()):
            try:
                description = describe(value, run_random)
            except Exception as exc:  # noqa: BLE001 -- a lazy attribute that fails: say so, alike in both
                description = f"error {type(exc).__name__}"
            if description is not None:
                found[f"{name}:{key}"] = description
    return found


def settings_seen(loaded, name):
    """What the prolog's settings look like to the modules the fresh run loaded (``loaded``)."""
    seen = {"env": {name: os.environ.get(name) for name in PROLOG_ENV}}
    if name in zygote.HELD:  # handed over, nothing of the zygote's import is left in sight
        seen["placeholder"] = "alive" if PLACEHOLDER is not None and PLACEHOLDER() is not None else "none"
        seen["held_finder"] = any(isinstance(finder, held_module.Finder) for finder in sys.meta_path)
    tempfile = sys.modules.get("tempfile") if "tempfile" in loaded else None
    if tempfile is not None:
        try:
            seen["tempdir"] = tempfile.gettempdir()
        except Exception as exc:  # noqa: BLE001 -- after the prolog tempfile may hold random2's Random
            seen["tempdir"] = f"error {type(exc).__name__}: {exc}"
    matplotlib = sys.modules.get("matplotlib") if "matplotlib" in loaded else None
    if matplotlib is not None:
        seen["matplotlib"] = {"configdir": matplotlib.get_configdir(), "cachedir": matplotlib.get_cachedir(),
                              "backend": matplotlib.get_backend()}
    return json.loads(json.dumps(seen).replace(RUN_DIR, "<RUN>"))


def rng_states():
    """``{module:name: digest of its state}`` for each random generator held at module level."""
    states = {}
    for name, module in sorted(sys.modules.items()):
        if not isinstance(module, types.ModuleType):
            continue
        for key, value in list(vars(module).items()):
            state = None
            try:
                if callable(getattr(value, "getstate", None)) and type(value).__module__ in ("random", "random2"):
                    state = value.getstate()
                elif type(value).__name__ == "RandomState":
                    state = value.get_state()
                elif type(value).__name__ == "Generator" and hasattr(value, "bit_generator"):
                    state = value.bit_generator.state
            except Exception:  # noqa: BLE001, S112 -- SystemRandom: no state to share
                continue
            if state is not None:
                states[f"{name}:{key}"] = hashlib.sha256(repr(state).encode()).hexdigest()[:16]
    return states


def import_all(names):
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 -- as the zygote: a package that is not there
            continue


def forked_rng_states(seed):
    """The module-level generators' states in two runs forked from one warm zygote, held packages imported."""
    quiet_preload()
    found = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            zygote.fresh_state()
            run_prolog(seed)
            import_all(zygote.HELD)
            os.write(write, json.dumps(rng_states()).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            found.append(json.loads(pipe.read()))
        os.waitpid(pid, 0)
    return found


def main():
    mode = sys.argv[1]
    if mode == "rngs":
        print(json.dumps(forked_rng_states(5)))
        return
    if mode == "rngs-fresh":
        run_prolog(5)
        import_all((*zygote.PRELOAD, *zygote.HELD))
        print(json.dumps(rng_states()))
        return
    name, seed = sys.argv[2], int(sys.argv[3])
    before = set(sys.modules)
    if mode in ("fresh", "fresh-noprolog"):
        if mode == "fresh":
            run_prolog(seed)
        importlib.import_module(name)
        loaded = set(sys.modules) - before
    else:
        fresh_loaded = set(json.loads(sys.argv[4])) if len(sys.argv) > 4 else None
        options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
        warm_start(options)
        if options.get("prolog", True):
            run_prolog(seed)
        before = set(sys.modules)
        importlib.import_module(name)
        loaded = fresh_loaded if fresh_loaded is not None else set(sys.modules)
        if options.get("only_new"):
            loaded &= set(sys.modules) - before
    print(json.dumps({"loaded": sorted(loaded), "namespace": namespace(loaded),
                      "settings": settings_seen(loaded, name)}))


if __name__ == "__main__":
    main()
