"""
What a pre-forked, pre-imported sandbox interpreter (a "zygote") would save per run, measured,
not built into the service (docs/decisions/0005-run-cost-and-overload.rst weighs it).

Today every run is a fresh interpreter: ``sudo -u <slot user> <python> -E -B jailed_code``,
whose .pth hook applies our confinement layer before the code runs. The zygote variant: one
long-lived interpreter per slot, started as the slot's user with the layer's modules, ``json``,
``six`` and numpy already imported, forks a child per run; the child moves into the run
directory and applies the very same layer (``codejail_confinement.confine``: Landlock, seccomp,
the reaper) before it executes the same ``jailed_code``. Both variants run the same jailed code
in the same kind of run directory, interleaved; CPU is user + system of the whole run (for the
zygote, of the forked child and everything it waited for).

Usage (root, after deploy/provision.sh): python benchmarks/zygote_cost.py [--runs 200]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from confinement_cost import CASES, SANDBOX_USER, SANDBOX_VENV, SITE, make_run_dir, one_run

# The zygote: pre-imports, then for each run directory named on stdin forks a child that
# confines itself with our layer and runs jailed_code; answers [status, cpu s, stdout] per run.
ZYGOTE = r"""
import io, json, os, resource, sys
sys.path.append(sys.argv[1])
import codejail_confinement as layer
import six, numpy  # what the runs would no longer import themselves
config = layer.load_config()
for line in sys.stdin:
    run_dir = line.strip()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            os.chdir(run_dir)
            os.dup2(os.open("input.json", os.O_RDONLY), 0)
            os.dup2(write_end, 1)
            layer.STATUS.update(layer.confine(config))  # forks the reaper; this is the code's process
            import random
            random.seed()  # a fresh seed per run, not the zygote's
            sys.stdin = open(0, closefd=False)
            sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)
            with open("jailed_code") as jailed:
                exec(compile(jailed.read(), "jailed_code", "exec"), {"__name__": "__main__"})
            sys.__stdout__.flush()
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as out:
        output = out.read()
    _, wait_status, usage = os.wait4(pid, 0)
    print(json.dumps([os.waitstatus_to_exitcode(wait_status), usage.ru_utime + usage.ru_stime, output]), flush=True)
"""
FLOOR = ["/usr/bin/python3.11", "-E", "-B", "-c", "import json, sys"]


def start_zygote(user):
    return subprocess.Popen(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
         f"{SANDBOX_VENV}/bin/python", "-E", "-B", "-S", "-c", ZYGOTE, f"{SANDBOX_VENV}/{SITE}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={"OPENBLAS_NUM_THREADS": "1"}, cwd="/")


def zygote_run(zygote, run_dir):
    start = time.perf_counter()
    zygote.stdin.write(run_dir + "\n")
    zygote.stdin.flush()
    status, cpu, output = json.loads(zygote.stdout.readline())
    elapsed = time.perf_counter() - start
    if status != 0 or json.loads(output).get("x") != 17:
        raise RuntimeError(f"zygote run: status {status}, output {output[-500:]!r}")
    return elapsed, cpu


def floor_cpu(runs):
    """CPU of one fresh floor interpreter (the make bench floor's command), median."""
    cpus = []
    for _ in range(runs):
        before = os.times()
        subprocess.run(FLOOR, check=True)
        after = os.times()
        cpus.append((after.children_user - before.children_user) + (after.children_system - before.children_system))
    return statistics.median(cpus)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    run_dir = make_run_dir()
    zygote = start_zygote(SANDBOX_USER)
    try:
        rows = []
        for case, (code, globals_dict) in CASES.items():
            stdin = json.dumps([code, globals_dict])
            with open(f"{run_dir}/input.json", "w", encoding="utf-8") as data:
                data.write(stdin)
            variants = {"fresh": lambda s=stdin: one_run(f"{SANDBOX_VENV}/bin/python", run_dir, s.encode()),
                        "zygote": lambda: zygote_run(zygote, run_dir)}
            times = {name: [] for name in variants}
            for run in variants.values():  # warm up
                run()
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                for name, run in variants.items():
                    times[name].append(run())
            for index, measure in ((0, "wall"), (1, "cpu")):
                fresh = statistics.median(t[index] for t in times["fresh"]) * 1000
                forked = statistics.median(t[index] for t in times["zygote"]) * 1000
                rows.append((case, measure, fresh, forked, fresh / forked))
        floor = floor_cpu(min(args.runs, 50)) * 1000
        print(f"sandbox run cost: medians of {args.runs} interleaved runs, as {SANDBOX_USER}, confinement layer on "
              "in both (cpu = user + system of the whole run)")
        print(f"{'case':<9} {'measure':<8} {'fresh ms':>9} {'zygote ms':>10} {'fresh/zygote':>13}")
        for case, measure, fresh, forked, ratio in rows:
            print(f"{case:<9} {measure:<8} {fresh:9.1f} {forked:10.1f} {ratio:13.2f}")
        print(f"floor interpreter ({' '.join(FLOOR[:3])} -c ...): {floor:.1f} ms CPU")
    finally:
        zygote.stdin.close()
        zygote.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
