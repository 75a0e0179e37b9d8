"""
Drives preload_probe.py (test_preload.py): each module of the zygote's PRELOAD imported as a fresh
run imports it (after the LMS's prolog) and as the warm sandbox has it (imported by the zygote,
before any prolog), with the sandbox packages' python; what differs between the two.
"""
import json
import os
import subprocess
import sys
import tempfile

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preload_probe.py")


def probe(python, *args):
    """preload_probe.py's JSON answer, run in a run directory of its own (with its tmp/, as codejail makes)."""
    with tempfile.TemporaryDirectory(prefix="codejail-preload-") as run_dir:
        os.mkdir(os.path.join(run_dir, "tmp"))
        # As codejail runs the sandbox: -E (no PYTHON* variables), TMPDIR as sudo passes it.
        env = {"PATH": "/usr/bin:/bin", "TMPDIR": os.path.join(run_dir, "tmp")}
        done = subprocess.run([python, "-E", PROBE, *args], cwd=run_dir, env=env, capture_output=True,
                              text=True, check=False, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])


def differences(python, module, seed=5, prolog=True, **options):
    """
    ``[(what, fresh, warm), ...]``: what ``module``'s import captured that depends on the order;
    warm as the zygote preloads (``options``: preload_probe.py's OPTIONS, e.g. ``preload`` and
    ``held`` instead of its PRELOAD and HELD). ``prolog`` False: both without the LMS prolog,
    comparing only the modules the warm import itself loaded (the preloaded ones take random2's
    classes whatever the code sends: ADR 7).
    """
    fresh = probe(python, "fresh" if prolog else "fresh-noprolog", module, str(seed))
    if not prolog:
        options.update(prolog=False, only_new=True)
    warm = probe(python, "warm", module, str(seed), json.dumps(fresh["loaded"]), json.dumps(options))
    if not prolog:  # only what the warm import loaded itself (from disk, not the stash), and the finder gone
        for seen in (fresh, warm):
            seen["namespace"] = {key: value for key, value in seen["namespace"].items()
                                 if key.partition(":")[0] in warm["loaded"]}
            seen["settings"] = {"held_finder": seen["settings"].get("held_finder")}
    found = [] if prolog or module in warm["loaded"] else [("imported from disk", True, False)]
    for part in ("namespace", "settings"):
        for key in sorted(set(fresh[part]) | set(warm[part])):
            if fresh[part].get(key) != warm[part].get(key):
                found.append((f"{part} {key}", fresh[part].get(key), warm[part].get(key)))
    return found


def shared_generators(python):
    """
    Module-level random generators that two warm runs share (the same state) but fresh
    interpreters do not (each its own): ``[name, ...]``.
    """
    first, second = probe(python, "rngs-fresh"), probe(python, "rngs-fresh")
    unseeded = {name for name in first if first[name] != second.get(name)}
    run_a, run_b = probe(python, "rngs")
    return sorted(name for name in unseeded if name in run_a and run_a[name] == run_b.get(name))


if __name__ == "__main__":  # a look by hand: preload.py PYTHON [MODULE...]
    sys.path.insert(0, os.path.join(os.path.dirname(PROBE), "..", ".."))
    from codejail_service.confinement import zygote

    for name in sys.argv[2:] or (*zygote.PRELOAD, *zygote.HELD):
        for what, fresh_value, warm_value in differences(sys.argv[1], name):
            print(f"{name}: {what}\n    fresh: {fresh_value}\n    warm:  {warm_value}")
    print("shared generators:", shared_generators(sys.argv[1]))
