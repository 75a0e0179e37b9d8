"""
What a module holds once a course's code has started, imported the way a fresh sandbox run imports
it or the way the warm sandbox's zygote does (test_preload.py runs this with the sandbox
packages' python, in a run directory of its own):

    preload_probe.py fresh MODULE SEED   the LMS's prolog, then ``import MODULE`` (a fresh run)
    preload_probe.py warm MODULE SEED [LOADED [PRELOAD]]
                                         the zygote's preload (PRELOAD, or that JSON list) and what
                                         its forked run does before the code, then the prolog, then
                                         the import; only the modules LOADED (a JSON list) compared
    preload_probe.py rngs                the state of every random generator a module holds at
                                         module level after the zygote's preload and a forked run's
                                         start, in two forked runs (and, with ``fresh``, in this
                                         interpreter after importing PRELOAD plainly)

It prints one JSON line last: for every module of MODULE's package that the fresh import loaded,
each module-level value that can differ with the order of import and prolog, described without
addresses: a reference to the run's own ``random`` (the prolog's per-run instance), to a module, to
an object of random or random2, and any string (also in a list, tuple or dict) naming the run
directory, a temporary directory or matplotlib's caches; and what the environment, ``tempfile`` and
matplotlib's configuration directories say then.
"""
import hashlib
import importlib
import json
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, os.path.join(REPO, "codejail_service", "confinement"))

import lms_prolog  # noqa: E402 -- the LMS's prolog, verbatim
import zygote  # noqa: E402 -- PRELOAD, preload() and fresh_state(), as the sandbox runs them

RUN_DIR = os.getcwd()
PROLOG_ENV = ("OPENBLAS_NUM_THREADS", "TMPDIR", "MPLCONFIGDIR", "MPLBACKEND", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
RANDOM_MODULES = ("random", "random2", "_random")
INTERESTING = (RUN_DIR, "/tmp", "matplotlib", "codejail")


def run_prolog(seed):
    exec(compile(lms_prolog.CODE_PROLOG % seed, "<prolog>", "exec"), {"__name__": "__main__"})  # noqa: S102


def quiet_preload(names=zygote.PRELOAD):
    """The zygote's preload (PRELOAD), which says "ready" on fd 1: not into our JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        zygote.preload(names)
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def warm_start(names):
    """The zygote: preload ``names``; then, as its forked run: the run's environment and state."""
    run_env = dict(os.environ)
    quiet_preload(names)
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


def settings_seen(loaded):
    """What the prolog's settings look like to the modules the fresh run loaded (``loaded``)."""
    seen = {"env": {name: os.environ.get(name) for name in PROLOG_ENV}}
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


def forked_rng_states():
    """The module-level generators' states in two runs forked from one warm zygote."""
    quiet_preload()
    found = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            zygote.fresh_state()
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
        print(json.dumps(forked_rng_states()))
        return
    if mode == "rngs-fresh":
        for name in zygote.PRELOAD:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112 -- as the zygote: a package that is not there
                continue
        print(json.dumps(rng_states()))
        return
    name, seed = sys.argv[2], int(sys.argv[3])
    before = set(sys.modules)
    if mode == "fresh":
        run_prolog(seed)
        importlib.import_module(name)
        loaded = set(sys.modules) - before
    else:
        fresh_loaded = set(json.loads(sys.argv[4])) if len(sys.argv) > 4 else None
        warm_start(tuple(json.loads(sys.argv[5])) if len(sys.argv) > 5 else zygote.PRELOAD)
        run_prolog(seed)
        importlib.import_module(name)
        loaded = fresh_loaded if fresh_loaded is not None else set(sys.modules)
    print(json.dumps({"loaded": sorted(loaded), "namespace": namespace(loaded),
                      "settings": settings_seen(loaded)}))


if __name__ == "__main__":
    main()
