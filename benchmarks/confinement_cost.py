"""
What our confinement layer costs per run: the same jailed code, run the way codejail
runs it (sudo -u <sandbox user> TMPDIR=tmp <python> -E -B jailed_code, stdin JSON,
pipes), with the layer and without it, interleaved, as root.

"Without" is a twin venv made for this benchmark whose path file points at the
sandbox venv's site-packages, so it imports the same packages but never meets the
layer's .pth hook. Nothing global is switched off, so a service running on this
host stays confined throughout.

Usage (root, after deploy/provision.sh): python benchmarks/confinement_cost.py [--runs 200]
"""
import argparse
import json
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = os.environ.get("CODEJAIL_PREFIX", "/opt/codejail-service")
SANDBOX_VENV = f"{PREFIX}/sandbox-venv"
TWIN_VENV = f"{PREFIX}/bench-twin-venv"
SANDBOX_USER = os.environ.get("CODEJAIL_SANDBOX_USER", "codejail-sandbox")
# With a tmpfs per pool slot (deploy/provision.sh), the layer accepts run dirs only there: slot 0's,
# as its user. Else the temp directory, as the base sandbox user.
RUN_DIR_PARENT = "/var/lib/codejail-service/runs/0"
if os.path.ismount(RUN_DIR_PARENT):
    SANDBOX_USER += "-0"
else:
    RUN_DIR_PARENT = None
APP_USER = os.environ.get("CODEJAIL_APP_USER", "codejail-app")
SITE = "lib/python3.11/site-packages"

# codejail's jailed wrapper (codejail/safe_exec.py), trimmed to what it does on every run.
WRAPPER = """
import sys
import six
import json
class DevNull(object):
    def write(self, *args, **kwargs): pass
    def flush(self, *args, **kwargs): pass
sys.stdout = DevNull()
code, g_dict = json.load(sys.stdin)
exec(code, g_dict)
g_dict = {k: v for k, v in g_dict.items() if k != '__builtins__' and isinstance(v, (int, float, str))}
json.dump(g_dict, sys.__stdout__)
"""
CASES = {
    "trivial": ("x = x + 1", {"x": 16}),
    "numpy": ("import os\nos.environ['OPENBLAS_NUM_THREADS'] = '1'\nimport numpy\nx = int(numpy.int64(x) + 1)",
              {"x": 16}),
}


def make_twin():
    if not os.path.exists(f"{TWIN_VENV}/bin/python"):
        subprocess.run(["/usr/bin/python3.11", "-m", "venv", "--copies", "--without-pip", TWIN_VENV], check=True)
    with open(f"{TWIN_VENV}/{SITE}/sandbox-packages.pth", "w", encoding="utf-8") as pth:
        pth.write(f"{SANDBOX_VENV}/{SITE}\n")


def make_run_dir():
    """A directory shaped like codejail's (made by the app user, tmp/ world-writable)."""
    app = pwd.getpwnam(APP_USER)
    path = tempfile.mkdtemp(prefix="codejail-", dir=RUN_DIR_PARENT)
    os.mkdir(f"{path}/tmp")
    with open(f"{path}/jailed_code", "w", encoding="utf-8") as jailed:
        jailed.write(WRAPPER)
    for entry in (path, f"{path}/tmp", f"{path}/jailed_code"):
        os.chown(entry, app.pw_uid, app.pw_gid)
    os.chmod(path, 0o775)
    os.chmod(f"{path}/tmp", 0o777)
    return path


def one_run(python, run_dir, stdin):
    """Wall time and CPU time (user + system, of sudo and everything under it) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(["sudo", "-u", SANDBOX_USER, "TMPDIR=tmp", python, "-E", "-B", "jailed_code"],
                            cwd=run_dir, input=stdin, capture_output=True, env={}, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0 or json.loads(result.stdout).get("x") != 17:
        raise RuntimeError(f"{python}: status {result.returncode}, stderr {result.stderr[-500:]!r}")
    return elapsed, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    make_twin()
    run_dir = make_run_dir()
    try:
        rows = []
        for case, (code, globals_dict) in CASES.items():
            stdin = json.dumps([code, globals_dict]).encode()
            times = {"layer on": [], "layer off": []}
            pythons = {"layer on": f"{SANDBOX_VENV}/bin/python", "layer off": f"{TWIN_VENV}/bin/python"}
            for python in pythons.values():  # warm the page cache
                one_run(python, run_dir, stdin)
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                for name, python in pythons.items():
                    times[name].append(one_run(python, run_dir, stdin))
            for index, measure in ((0, "wall"), (1, "cpu")):
                on = statistics.median(t[index] for t in times["layer on"]) * 1000
                off = statistics.median(t[index] for t in times["layer off"]) * 1000
                rows.append((case, measure, off, on, on - off, on / off))
        print(f"confinement cost per run: medians of {args.runs} interleaved runs each, "
              f"sudo -u {SANDBOX_USER} ... python -E -B jailed_code (cpu = user + system of the whole run)")
        print(f"{'case':<9} {'measure':<8} {'layer off ms':>13} {'layer on ms':>12} {'cost ms':>8} {'ratio':>6}")
        for case, measure, off, on, cost, ratio in rows:
            print(f"{case:<9} {measure:<8} {off:13.1f} {on:12.1f} {cost:8.1f} {ratio:6.3f}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(TWIN_VENV, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
