"""
What importing each package that course code uses costs a run (issue 13: what the warm
sandbox's zygote preloads, ``PRELOAD`` in codejail_service/confinement/zygote.py, is chosen by
this).

Each module is imported by a fresh sandbox interpreter run as codejail runs one (``sudo -u <slot
user> TMPDIR=tmp <python> -E -B jailed_code``, our confinement layer on), after what every run
imports anyway (codejail's wrapper: json, six), in the environment the LMS prolog sets
(OPENBLAS_NUM_THREADS=1, TMPDIR and MPLCONFIGDIR = the run's tmp/). The jailed code measures
its own import: CPU (``time.process_time``, user + system of the interpreter) and wall time,
and the memory the import adds (the peak resident set; the layer hides /proc). Medians of
``--runs`` runs per module, the modules interleaved.

Usage (root, after deploy/provision.sh): python benchmarks/import_cost.py [--runs 5] [--modules a,b]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

from confinement_cost import SANDBOX_USER, SANDBOX_VENV, make_run_dir

# What the LMS's lazy imports name (xblocks-contrib capa safe_exec ASSUMED_IMPORTS), the
# sandbox requirements (requirements/sandbox/platform/base.in) and the scipy submodules graders use most.
MODULES = (
    "random2", "numpy", "scipy", "scipy.optimize", "scipy.stats", "scipy.integrate", "scipy.linalg",
    "scipy.special", "scipy.interpolate", "scipy.sparse", "sympy", "matplotlib", "matplotlib.pyplot",
    "calc", "eia", "chem.chemcalc", "chem.chemtools", "chem.miller", "verifiers.draganddrop",
    "networkx", "lxml.etree", "nltk", "pyparsing", "cryptography.fernet",
)

MEASURE = """
import os, sys, time, json, six, resource
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["TMPDIR"] = os.getcwd() + "/tmp"
os.environ["MPLCONFIGDIR"] = os.environ["TMPDIR"]
def rss():  # the peak resident set (the layer hides /proc): imports only grow it
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
name = sys.stdin.read().strip()
rss0, cpu0, wall0 = rss(), time.process_time(), time.perf_counter()
error = None
try:
    __import__(name)
except BaseException as exc:
    error = repr(exc)[:300]
print(json.dumps({"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0,
                  "rss": rss() - rss0, "error": error}))
"""


def measure(run_dir, name):
    with open(os.path.join(run_dir, "jailed_code"), "w", encoding="utf-8") as jailed:
        jailed.write(MEASURE)
    result = subprocess.run(["sudo", "-u", SANDBOX_USER, "TMPDIR=tmp", f"{SANDBOX_VENV}/bin/python", "-E", "-B",
                             "jailed_code"], cwd=run_dir, input=name.encode(), capture_output=True, env={},
                            check=False, timeout=120)
    for entry in os.listdir(os.path.join(run_dir, "tmp")):  # what the import left (matplotlib's cache)
        shutil.rmtree(os.path.join(run_dir, "tmp", entry), ignore_errors=True)
    if result.returncode != 0:
        return {"error": f"status {result.returncode}: {result.stderr[-300:]!r}"}
    return json.loads(result.stdout)


def fmt(value, scale):
    return f"{value * scale:9.1f}" if value is not None else f"{'-':>9}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modules", default=",".join(MODULES))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    modules = [m for m in args.modules.split(",") if m]
    run_dir = make_run_dir()
    samples = {name: [] for name in modules}
    try:
        for _ in range(args.runs):
            for name in modules:
                samples[name].append(measure(run_dir, name))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    rows = {}
    print(f"import cost per module: medians of {args.runs} fresh sandbox runs each, as {SANDBOX_USER}, "
          "layer on, after json and six, under the LMS prolog's environment")
    print(f"{'module':<24}{'cpu ms':>9}{'wall ms':>9}{'RSS MiB':>9}  error")
    for name in sorted(modules, key=lambda n: -statistics.median(s.get("cpu", 0) for s in samples[n])):
        good = [s for s in samples[name] if not s.get("error")]
        error = next((s["error"] for s in samples[name] if s.get("error")), "")
        row = {key: statistics.median(s[key] for s in good) if good else None for key in ("cpu", "wall", "rss")}
        row["error"] = error
        rows[name] = row
        print(f"{name:<24}{fmt(row['cpu'], 1000)}{fmt(row['wall'], 1000)}{fmt(row['rss'], 1 / 2**20)}  {error}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"runs": args.runs, "user": SANDBOX_USER, "modules": rows}, out, indent=2)


if __name__ == "__main__":
    sys.exit(main())
