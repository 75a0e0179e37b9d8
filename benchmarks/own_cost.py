"""
A course problem's own cost, with no service: run by ``benchmarks/bench.py`` with the sandbox
venv's Python (as root: the confinement hook leaves root alone), it preloads what a warm
sandbox's zygote does (its own ``preload``), takes the packages the zygote holds in sight as a
run's first import of them would (once, for a stand-in of the prolog's ``random``: what they hold
costs the same whichever it is), then runs each case's code as codejail's wrapper would (exec with its
globals, then the globals as JSON) ``RUNS`` times, and prints ``{case: p50 ms}`` as its last line.

stdin: ``{case: {"code": ..., "globals": {...}}}``; argv[1]: RUNS.
"""
import copy
import importlib
import json
import sys
import time

from codejail_confinement import held, zygote


def main():
    runs = int(sys.argv[1])
    cases = json.load(sys.stdin)
    zygote.preload()  # what the full zygote holds
    stdlib_random = sys.modules["random"]
    sys.modules["random"] = held.placeholder(sys.modules["random2"])
    for name in zygote.HELD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 -- as the zygote: a package that is not there
            continue
    sys.modules["random"] = stdlib_random
    modules = dict(sys.modules)
    result = {}
    for case, spec in cases.items():
        times = []
        for _ in range(runs + 1):  # the first run warms up what the code imports beyond the preload
            sys.modules.clear()
            sys.modules.update(modules)  # the LMS prolog replaces ``random``: each run starts as a fork would
            globals_dict = copy.deepcopy(spec["globals"])
            started = time.perf_counter()
            exec(spec["code"], globals_dict)  # noqa: S102 -- our own benchmark's code
            json.dumps({key: value for key, value in globals_dict.items() if _jsonable(value)})
            times.append(time.perf_counter() - started)
        times = sorted(times[1:])
        result[case] = round(times[len(times) // 2] * 1000, 2)
    print(json.dumps(result))


def _jsonable(value):
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


if __name__ == "__main__":
    main()
