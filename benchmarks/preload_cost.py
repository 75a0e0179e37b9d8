"""
What leaving a module out of the warm sandbox's preload costs the graders that import it (ADR 7):
a run's CPU and wall time on the warm path, forked from a process that preloaded the zygote's
PRELOAD, with and without the module added to it. The run is the LMS's prolog and lazy imports
(benchmarks/lms_prolog.py) and a grader that uses the module. No sudo and no confinement layer:
the figures are the import's share of a run, not a whole run's (make bench-zygote measures those).

    <sandbox venv>/bin/python benchmarks/preload_cost.py [--runs N]

Run with the sandbox venv's python (or any venv of the same packages), from the checkout.
"""
import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "codejail_service", "confinement"))

import lms_prolog  # noqa: E402
import zygote  # noqa: E402

# A grader for each module the zygote leaves out, as course authors write them.
GRADERS = {
    "sympy": ("import sympy\nx = sympy.Symbol('x')\n"
              "ok = sympy.simplify(sympy.sympify('(x+1)**2') - (x**2 + 2*x + 1)) == 0\n"),
    "networkx": "import networkx as nx\nG = nx.path_graph(6)\nok = nx.shortest_path_length(G, 0, 5) == 5\n",
    "chem.chemcalc": "ok = chemcalc.chemical_equations_equal('H2 + O2 -> H2O2', '2H2 + 2O2 -> 2H2O2')\n",
}


def one_run(code, run_dir):
    """Fork a run of ``code`` (after the prolog) from this process in ``run_dir``: (CPU s, wall s) of the child."""
    os.makedirs(os.path.join(run_dir, "tmp"))
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.chdir(run_dir)
            zygote.fresh_state()
            exec(compile(lms_prolog.wrap(code), "jailed_code", "exec"), {"__name__": "__main__"})  # noqa: S102
        except BaseException as exc:  # noqa: BLE001 -- report, as a run would
            print(f"run failed: {exc!r}", file=sys.stderr)
            status = 1
        os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert os.waitstatus_to_exitcode(wait_status) == 0, code
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def measure(module, preloaded, runs):
    """In this process: the zygote's preload (with ``module`` if ``preloaded``), then ``runs`` runs."""
    names = zygote.PRELOAD + ((module,) if preloaded else ())
    # Made before the preload: after it, tempfile names files with random2's Random, as after the
    # LMS prolog, whose Random has no choices().
    base = tempfile.mkdtemp(prefix="codejail-preload-cost-")
    saved = os.dup(1)
    os.dup2(2, 1)  # preload says "ready" on fd 1
    zygote.preload(names)
    os.dup2(saved, 1)
    figures = [one_run(GRADERS[module], os.path.join(base, str(n))) for n in range(runs)]
    shutil.rmtree(base)
    print(statistics.median(cpu for cpu, _ in figures) * 1000, statistics.median(wall for _, wall in figures) * 1000)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--measure", nargs=2, metavar=("MODULE", "PRELOADED"), help="(internal) one configuration")
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], args.measure[1] == "yes", args.runs)
        return
    import subprocess  # noqa: PLC0415 -- one process per configuration, each with its own preload

    print(f"median of {args.runs} runs; {'module':<15} {'preloaded CPU ms':>17} {'left out CPU ms':>16} "
          f"{'preloaded wall ms':>18} {'left out wall ms':>17}")
    for module in GRADERS:
        figures = []
        for preloaded in ("yes", "no"):
            out = subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--measure", module, preloaded],
                                 capture_output=True, text=True, check=True)
            figures.append([float(value) for value in out.stdout.split()])
        (cpu_in, wall_in), (cpu_out, wall_out) = figures
        print(f"{module:<15} {cpu_in:>17.0f} {cpu_out:>16.0f} {wall_in:>18.0f} {wall_out:>17.0f}")


if __name__ == "__main__":
    main()
