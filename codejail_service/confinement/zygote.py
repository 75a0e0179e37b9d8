"""
The warm sandbox (docs/decisions/0007-warm-sandbox.rst; on by default with a sandbox user pool, CODEJAIL_WARM_SANDBOX).

A sandbox interpreter that has already imported what runs import most (``PRELOAD``) and forks
one child per run. The child does what a fresh ``python -E -B jailed_code`` does, in the same
order: it moves into the run directory, takes the run's rlimits and a session of its own, is
confined by this package (``confine``: Landlock, seccomp, the reaper) before it reads any
submitted code, then runs ``jailed_code`` as ``__main__``. What differs from a fresh
interpreter, and why that is acceptable, is the ADR's subject.

Started by the web app as a pool slot's sandbox user, through a pinned sudoers rule:
``<sandbox venv>/bin/python-zygote -E -B -S <this file>`` (a hard link to the venv's python, so
that AppArmor can tell it apart), with a listening ``AF_UNIX`` ``SOCK_SEQPACKET`` socket as its
stdin (sudo closes every other descriptor). The socket lives in the app's private slot
directory: only the app can connect, and a run cannot (seccomp refuses ``connect``). Per
connection, one run:

- app -> zygote: ``{"cwd": <run dir>, "rlimits": [[resource, soft, hard], ...], "max_runs": N,
  "max_seconds": T}`` with the run's stdin, stdout and stderr pipe ends attached (SCM_RIGHTS);
- zygote -> app: ``{"pid": <pid>}`` at once (its process group, for codejail's time limit), with
  ``"retire": true`` once it has served N runs or T seconds (``Lifetime``), then
  ``{"status": <returncode as subprocess reports it>}`` as soon as the run has said it (its
  output closed: ``say_done``), and ``{"status": ..., "counts": {...}, "ended": true}`` once the
  run is reaped and its tmp/ empty (the only message after the pid if the run said nothing).

Or, from the app once a successor listens in this zygote's place: ``{"retire": true}`` (no
descriptors); it serves the runs already queued, then exits.

It writes ``ready`` to its stdout once it has preloaded (the app makes its socket reachable only
then). It exits when retired, with the service (``kill -9 -1`` as the slot's user), and idle
once the service that started it is gone (``serve_forever``). The app's clean-up of a run kills
the run's process groups, in the run's session, never this one's (sandbox/processes.py), but as
its last resort.
"""
import errno
import gc
import importlib
import json
import os
import pwd
import resource
import runpy
import select
import signal
import socket
import sys
import time
import traceback
import types

# Imported once here, instead of by every run that needs them, in this order; chosen by what
# importing each costs a fresh run (``make bench-imports``, benchmarks/import_cost.py; CPU ms on the
# reference host, docs/decisions/0007-warm-sandbox.rst): what codejail's wrapper and the LMS
# prolog import (json, six, random2) and what runpy imports to run any code (pkgutil), the modules
# the LMS's lazy imports name (numpy 83, scipy, calc 153, chem.chemtools, chem.miller 93, eia,
# verifiers.draganddrop) and what course graders import most
# (scipy.optimize 430 and .stats 842, matplotlib.pyplot 791, mpmath, lxml.etree 27). A module that
# fails to import is skipped (said on stderr); nothing else in the sandbox venv is imported until a
# run asks for it.
#
# Not among them: what holds, once imported, the ``random`` that the LMS prolog puts in sys.modules
# for the one run (a random2.Random seeded with the problem's seed), for a module imported before
# the prolog holds another: sympy (sympy.core.random and a dozen modules), networkx (whose seeding
# tests ``seed is random``), chem.chemcalc (nltk: eight modules) and email.utils. Those are HELD.
# tests/lms_client/test_preload.py imports each of PRELOAD and HELD in a fresh interpreter after
# the prolog and in the zygote's way, and fails on any difference (ADR 7).
PRELOAD = (
    "json", "six", "random", "random2", "pkgutil",
    "numpy", "scipy", "scipy.optimize", "scipy.stats", "scipy.integrate", "scipy.interpolate",
    "scipy.linalg", "scipy.special", "scipy.sparse",
    "mpmath",
    "matplotlib",  # and matplotlib.pyplot, on Agg: preload_matplotlib
    "calc", "chem.chemtools", "chem.miller", "eia", "verifiers.draganddrop",
    "lxml.etree",
)
# Two zygotes per slot, one process forked from the other (docs/decisions/0011-a-run-costs-a-fork.rst):
# a fork costs in proportion to what the forking process holds, and so does its child's exit and
# its copy-on-write faults. The light zygote, the one the app talks to, holds only what codejail's
# wrapper and the LMS prolog import; it forks the runs whose code imports nothing else outside the
# standard library (the app tells it so: zygote_client.light_enough) and hands every other run to
# the full zygote, its child, which preloads the rest of ``PRELOAD``. A light run that imports more
# after all (by a name the app's rule cannot see) imports it from disk, as a fresh interpreter would.
#
# pkgutil (with typing and weakref, 3.8 ms) is what runpy.run_path imports for every run.
LIGHT_PRELOAD = ("json", "six", "random", "random2", "pkgutil")
# Imported after PRELOAD (sympy 341 ms, networkx 180, chem.chemcalc 1238 with nltk; and each one's
# WARMUP), after a placeholder of the prolog's ``random``, then out of sight: a run that imports one
# of them under the LMS prolog gets them with its own ``random`` wherever the placeholder was, its
# own generators; one without the prolog imports them from disk (confinement/held.py). A package
# whose import cannot be replayed so (e.g. it drew from the placeholder) is left out, said on stderr.
HELD = ("sympy", "networkx", "chem.chemcalc")
# Run once after the preload, so that what a package builds on first use (sympy's caches and the
# modules simplify imports lazily: 250 ms on a first simplify, 30 ms after; matplotlib's fonts and
# Agg canvas; chemcalc's parser) is there in every run. Each is the zygote's own code (no input),
# skipped (said on stderr) if it fails; a held package's runs with the placeholder in place.
WARMUP = {
    "sympy": "x, y = sympy.symbols('x y')\n"
             "sympy.simplify(sympy.sympify('(x + y)**2 - 2*x*y') - sympy.sympify('x**2 + y**2'))\n"
             "sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)\n",
    "chem.chemcalc": "chem.chemcalc.chemical_equations_equal('2H2 + O2 -> 2H2O', '4H2 + 2O2 -> 4H2O')\n",
    "matplotlib": "import io\nfig, ax = matplotlib.pyplot.subplots(figsize=(3, 2))\nax.plot([1, 2, 3], [2, 1, 3])\n"
                  "fig.savefig(io.BytesIO(), format='png')\nmatplotlib.pyplot.close(fig)\n",
}
# What a typical run of these packages does, as WARMUP is for the others, run only where
# ``learn_copies`` learns from it: in a child it then discards, never in the zygote.
LEARN = {
    "numpy": "a = numpy.linspace(0.0, 1.0, 50)\nfloat(numpy.trapz(a * a, a))\n"
             "numpy.linalg.solve(numpy.eye(3) * 2.0, numpy.ones(3)).tolist()\n",
    "scipy": "scipy.stats.norm.cdf(1.0)\nscipy.stats.t.ppf(0.975, 10)\n"
             "scipy.stats.linregress([1.0, 2.0, 3.0], [2.0, 4.1, 5.9])\n"
             "scipy.optimize.brentq(lambda t: t * t - 2.0, 0.0, 2.0)\n"
             "scipy.integrate.quad(lambda t: t * t, 0.0, 1.0)\n",
}
# Set before the preload, as the LMS prolog does before it imports numpy (TNL-6456): OpenBLAS
# must not start a thread per core in a process that forks, under a tight RLIMIT_NPROC. agg:
# matplotlib's non-interactive backend, the only one a run can use (no display, no GUI toolkit),
# named as matplotlib names it once it has chosen it by itself, as in a fresh run.
PRELOAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MPLBACKEND": "agg"}
# matplotlib's font list, built at provisioning (deploy/provision.sh) into this read-only
# directory of the sandbox venv (relative to its prefix, which site sets); see preload_matplotlib.
MATPLOTLIB_CACHE = ("share", "codejail-matplotlib")
# How often an idle zygote looks whether the service that started it is still there.
IDLE_SECONDS = 600
MAX_MESSAGE = 64 * 1024


def main():
    if os.geteuid() == 0:
        sys.exit("codejail zygote: refusing to run as root")
    # Out of the way of the worker that started it (sandbox/zygote_client.py): its first process
    # exits at once, so that gunicorn's master (a child subreaper) adopts the zygote and reaps it
    # as soon as it ends, instead of a zombie of that worker, counted against the slot's user.
    if os.fork():
        os._exit(0)
    site_packages = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.remove(os.path.dirname(os.path.abspath(__file__)))  # the script's own directory
    sys.path.append(site_packages)
    import site  # -S: site runs now, once the layer knows it must not confine

    import codejail_confinement as layer

    # The .pth hook (site) must not confine the zygote itself: each run confines its child.
    layer.STATUS["mode"] = "zygote"
    site.main()  # what a fresh run's start does: the venv's prefix (the layer's rules), site-packages
    config = layer.load_config()
    # Confined before it imports anything (docs/decisions/0007-warm-sandbox.rst).
    layer.confine_zygote(config, own_user_name())
    if supervises(config):
        # Each run's reaper (supervise_run): what its processes leave behind is ours to reap, and
        # their ends are waited for (sigtimedwait).
        layer.process.become_subreaper()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    run_env = dict(os.environ)
    preload(LIGHT_PRELOAD, held=())
    full = start_full(layer, config, run_env)
    # A successor (the app's zygote_client.replace) is put in its predecessor's place only once it
    # can serve: both of its zygotes have preloaded.
    os.write(1, b"ready\n")
    serve_forever(socket.socket(fileno=os.dup(0)), layer, config, run_env, full)


def supervises(config):
    """True when this zygote is its runs' reaper: with our layer on (off, a run is its own, as a fresh one)."""
    return config["mode"] != "off"


def own_user_name():
    """
    The zygote's user (its slot's): as sudo set it in ``USER``, for the zygote's AppArmor profile
    does not let it read the password database (/etc/passwd, nsswitch); else from that database.
    """
    return os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name


def preload(names=PRELOAD, held=HELD):
    """
    Import ``names`` (``PRELOAD``), warm them up and put them as after the LMS prolog, then
    ``held`` (``HELD``) out of sight.
    """
    os.environ.update(PRELOAD_ENV)
    for name in names:
        try:
            if name == "matplotlib":
                preload_matplotlib()
            else:
                __import__(name)
        except Exception as exc:  # ImportError, or whatever a broken package raises
            print(f"codejail zygote: not preloading {name}: {exc!r}", file=sys.stderr)
    warm_up(names)
    as_after_prolog()
    finder = hold(held)
    # What the preload made lives as long as the zygote: out of the collector's sight, a run's
    # collections do not walk (and so copy, page by page) the inherited objects.
    gc.collect()
    gc.freeze()
    collapse_to_huge_pages()
    return finder


# madvise(2): copy a range's pages that are still shared copy-on-write, as writes to them would
# (Linux 5.14); make a range's pages transparent huge pages now (Linux 6.1), and their size.
MADV_POPULATE_WRITE = 23
MADV_COLLAPSE = 25
HUGE_PAGE = 2 * 1024 * 1024
PAGE = 4096


def madvise():
    """libc's madvise(2), through ctypes (errno kept)."""
    import ctypes

    function = ctypes.CDLL(None, use_errno=True).madvise
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return function


def private_ranges():
    """The (low, high) bounds of this process's private anonymous writable mappings (and its heap)."""
    ranges = []
    with open("/proc/self/maps", encoding="ascii") as maps:
        for line in maps.read().splitlines():
            fields = line.split()
            if fields[1] == "rw-p" and fields[5:] in ([], ["[heap]"]):
                ranges.append(tuple(int(bound, 16) for bound in fields[0].split("-")))
    return ranges


def collapse_to_huge_pages():
    """
    Back what the preload holds with transparent huge pages where the kernel can: each 2 MiB
    aligned range of the private anonymous writable mappings (the heap, the large allocations;
    not pymalloc's 1 MiB arenas). A fork copies, and a run's exit unmaps, one page-table entry
    per 2 MiB there instead of 512 (about half the full preload: its runs' exit costs about 2
    ms less, their fork as much; docs/decisions/0011-a-run-costs-a-fork.rst). A run that writes
    to such a page still copies 4 KiB of it. Without huge pages (THP "never", a kernel before
    6.1) it leaves all as it was, and says so. The number of ranges collapsed.
    """
    import ctypes

    collapse = madvise()
    tried = collapsed = 0
    try:
        ranges = private_ranges()
    except OSError as exc:
        print(f"codejail zygote: no huge pages: {exc!r}", file=sys.stderr)
        return 0
    for low, high in ranges:
        for start in range(-(-low // HUGE_PAGE) * HUGE_PAGE, high // HUGE_PAGE * HUGE_PAGE, HUGE_PAGE):
            tried += 1
            collapsed += collapse(start, HUGE_PAGE, MADV_COLLAPSE) == 0
    if tried and not collapsed:
        print(f"codejail zygote: no huge pages: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
    return collapsed


def hold(names):
    """
    Import ``names`` (and warm them up) as after the LMS prolog, handed to a run only once it
    imports one (confinement/held.py); the held module's ``Finder``, or None.
    """
    held = _sibling("held")

    def prepare(name):
        importlib.import_module(name)
        warm_up((name,))

    return held.hold(names, prepare)


def _sibling(name):
    """A module of the confinement layer (as a package here, ``codejail_confinement`` in the sandbox venv)."""
    return importlib.import_module(f"{__package__ or 'codejail_confinement'}.{name}")


def as_after_prolog():
    """
    What the preloaded modules took from ``random`` as they were imported, as they would have taken
    it after the LMS prolog, which sets random2's ``Random`` and ``SystemRandom`` on the ``random``
    it puts in sys.modules: ``from random import Random`` (tempfile), a ``SystemRandom()`` and its
    methods (secrets, numpy.random.bit_generator). Neither holds state of a run's (SystemRandom reads
    os.urandom), so one replacement serves every run.
    """
    stdlib, random2 = sys.modules.get("random"), sys.modules.get("random2")
    if stdlib is None or random2 is None:
        return
    classes = {stdlib.Random: random2.Random, stdlib.SystemRandom: random2.SystemRandom}
    replacements = {}  # id of a stdlib SystemRandom -> its random2 replacement

    def replacement(system_random):
        return replacements.setdefault(id(system_random), random2.SystemRandom())

    for name, module in list(sys.modules.items()):
        if name in ("random", "random2") or not hasattr(module, "__dict__"):
            continue
        namespace = vars(module)
        # By exact type only: isinstance or getattr would evaluate a lazy proxy a module holds.
        for key, value in list(namespace.items()):
            kind = type(value)
            if kind is type and value in classes:
                namespace[key] = classes[value]
            elif kind is stdlib.SystemRandom:
                namespace[key] = replacement(value)
            elif kind in (types.MethodType, types.BuiltinMethodType) and type(value.__self__) is stdlib.SystemRandom:
                namespace[key] = getattr(replacement(value.__self__), value.__name__)


def warm_up(names, warmup=None):
    """Run ``WARMUP``'s code for each preloaded package of ``names`` (its top package in scope)."""
    for name, code in (WARMUP if warmup is None else warmup).items():
        if name not in names or name not in sys.modules:
            continue
        top = name.partition(".")[0]
        try:
            exec(code, {top: sys.modules[top]})  # our own constant code
        except Exception as exc:  # a package that changed: the run pays, nothing breaks
            print(f"codejail zygote: not warming up {name}: {exc!r}", file=sys.stderr)


# /proc/<pid>/pagemap's flags of a page (Documentation/admin-guide/mm/pagemap.rst): present, and
# mapped by this process alone (not shared copy-on-write with its parent).
PRESENT, EXCLUSIVE = 1 << 63, 1 << 56


def learn_copies(finder, warmup=None):
    """
    A run copies each page of the zygote's it writes to (reference counts, caches), one page
    fault at a time: 1,600-3,600 pages for a chemcalc, sympy or matplotlib problem. So that a
    spare can copy them ahead (``Spare``), learn which they are, once: for each package of
    ``WARMUP`` and ``LEARN`` this zygote holds (``finder``: the held ones), in a child that runs
    that code as a run would (a held package handed over first), the pages of the private mappings
    that its page map shows shared with this zygote before and its own after.
    ``{top-level package: [(address, bytes), ...]}``, adjacent pages joined; a package whose
    learning fails is left out, said on stderr.
    """
    learned = {}
    for name, code in ({**WARMUP, **LEARN} if warmup is None else warmup).items():
        held = finder is not None and name in finder.modules
        if not held and name not in sys.modules:
            continue
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover -- the learner (tests/test_zygote.py)
            status = 1
            try:
                os.close(reader)
                os.write(writer, json.dumps(_written_by(name, code, held)).encode())
                status = 0
            except BaseException:  # said where the service logs the zygote's stderr
                os.write(2, f"codejail zygote: learning {name}:\n{traceback.format_exc()}".encode())
            finally:
                os._exit(status)
        os.close(writer)
        with open(reader, "rb") as answer:
            data = answer.read()
        os.waitpid(pid, 0)
        try:
            learned[name.partition(".")[0]] = [(address, size) for address, size in json.loads(data)]
        except ValueError:
            print(f"codejail zygote: not learning what a run of {name} copies", file=sys.stderr)
    return learned


def _own_pagemap():  # pragma: no cover -- in the learner
    """
    This process's /proc/self/pagemap, opened. A zygote is not dumpable, so /proc keeps that file
    root's: the learner is dumpable for the open alone (it runs no code but the zygote's), and
    reads on from what it opened once it is not dumpable again.
    """
    try:
        return os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        process = _sibling("process")
        process.prctl(process.PR_SET_DUMPABLE, 1)
        try:
            return os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            process.set_not_dumpable()


def _written_by(name, code, held):  # pragma: no cover -- in the learner
    """The learner's pages a run of ``name`` writes (``learn_copies``), as [[address, bytes], ...]."""
    ranges = private_ranges()
    pagemap = _own_pagemap()
    before, after = ([bytearray((high - low) // PAGE * 8) for low, high in ranges] for _ in range(2))
    for (low, _), entries in zip(ranges, before, strict=True):
        os.preadv(pagemap, [entries], low // PAGE * 8)
    if held:
        sys.modules["random"] = _sibling("held").placeholder(sys.modules["random2"])
        importlib.import_module(name)
    warm_up((name,), {name: code})
    for (low, _), entries in zip(ranges, after, strict=True):
        os.preadv(pagemap, [entries], low // PAGE * 8)
    written = []
    for (low, _), was, now in zip(ranges, before, after, strict=True):
        for index, (old, new) in enumerate(zip(memoryview(was).cast("Q"), memoryview(now).cast("Q"), strict=True)):
            if old & PRESENT and not old & EXCLUSIVE and new & PRESENT and new & EXCLUSIVE:
                address = low + index * PAGE
                if written and written[-1][0] + written[-1][1] == address:
                    written[-1][1] += PAGE
                else:
                    written.append([address, PAGE])
    return written


def preload_matplotlib():
    """
    matplotlib and pyplot, with the font list that provisioning built into ``MATPLOTLIB_CACHE``.

    matplotlib keeps its font list in its cache directory, and looks for style files in its config
    directory, which it wants writable: else it makes a temporary directory (left behind, as a
    zygote ends killed) and rebuilds the list there (~0.2 s). A zygote may write nowhere. So,
    while matplotlib is imported, its config file is named outright (MATPLOTLIBRC: its own
    defaults; MPLBACKEND says Agg) and its config and cache directories are pinned to that
    read-only one; then its own lookups are put back: a run that asks for them finds its own
    (MPLCONFIGDIR, which the LMS prolog points at the run's tmp/), with the font list in memory.
    """
    import importlib.util

    cache_dir = os.path.join(sys.prefix, *MATPLOTLIB_CACHE)
    package_dir = importlib.util.find_spec("matplotlib").submodule_search_locations[0]
    os.environ["MATPLOTLIBRC"] = os.path.join(package_dir, "mpl-data", "matplotlibrc")
    try:
        import matplotlib

        lookups = matplotlib.get_configdir, matplotlib.get_cachedir
        matplotlib.get_configdir = matplotlib.get_cachedir = lambda: cache_dir
        try:
            import matplotlib.pyplot  # noqa: F401 -- reads the font list, finds no styles
        finally:
            matplotlib.get_configdir, matplotlib.get_cachedir = lookups
    finally:
        del os.environ["MATPLOTLIBRC"]


class Lifetime:
    """
    How long this zygote serves (``CODEJAIL_ZYGOTE_MAX_RUNS`` and ``_MAX_SECONDS``, sent by the
    app with every run): once either is reached, it asks the app for a successor with each run's
    pid (``"retire": true``) and keeps serving until the app has put one in its place and told
    it to go (``{"retire": true}``: it serves what is already queued, then exits). If no
    successor comes, it stops taking runs at ten times the runs or twice the seconds (the next
    run then starts a new zygote, as when none is there): a bound, not the usual way out, since
    a successor may take several seconds to preload on a busy host.
    """

    def __init__(self):
        self.runs = 0
        self.born = time.monotonic()

    def served(self, request):
        """Count one run; True if this zygote should be replaced."""
        self.runs += 1
        return self._past(request, 1, 1)

    def over(self, request):
        """True once this zygote may take no more runs, successor or not."""
        return self._past(request, 10, 2)

    def _past(self, request, runs_factor, seconds_factor):
        max_runs, max_seconds = request.get("max_runs"), request.get("max_seconds")
        return bool((max_runs and self.runs >= runs_factor * max_runs)
                    or (max_seconds and time.monotonic() - self.born >= seconds_factor * max_seconds))


def start_full(layer, config, run_env, names=PRELOAD, held=HELD):
    """
    Fork the full zygote (``LIGHT_PRELOAD``'s comment) and wait until it has preloaded ``names``
    and ``held`` (``preload``):
    this zygote's end of the socket pair it is served through (``forward``, ``serve_forwarded``).
    It exits once this zygote has gone (the pair's end of file), and so does this one if it dies.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if os.fork() == 0:  # pragma: no cover -- the full zygote (tests/test_zygote.py, and live)
        status = 1
        try:
            ours.close()
            # Not the listener's: a connection must never queue where nobody accepts. Still taken
            # (by stderr): a run's descriptors move onto 0-2 in order (run), none may arrive there.
            os.dup2(2, 0)
            if supervises(config):
                layer.process.become_subreaper()  # not inherited across fork
            learned = learn_copies(preload(names, held))
            theirs.send(b"ready")
            serve_forwarded(theirs, layer, config, run_env, learned)
            status = 0
        finally:
            os._exit(status)
    theirs.close()
    if ours.recv(16) != b"ready":
        sys.exit("codejail zygote: the full zygote exited before it had preloaded")
    return ours


def serve_forever(listener, layer, config, run_env, full=None):
    """
    One run per connection, until retired or past its lifetime, or idle once orphaned: every
    ``IDLE_SECONDS`` without a connection, it exits if its parent is no longer the one that
    adopted it (gunicorn's master, ``main``), i.e. the service that started it is gone. While the
    service runs it stays, however quiet its slot: a slot without a zygote serves its runs in
    fresh interpreters until a new one has preloaded (the app's zygote_client.py). ``full``: the
    full zygote's socket pair, through which it serves what this one does not (``serve``).
    """
    listener.settimeout(IDLE_SECONDS)
    service = os.getppid()
    lifetime = Lifetime()
    retiring = False
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:  # idle
            if os.getppid() == service:
                continue
            return
        except BlockingIOError:  # retiring, and nothing left queued
            return
        with conn:
            conn.settimeout(None)
            try:
                outcome = serve(conn, listener, layer, config, run_env, lifetime, full)
            except OSError as exc:  # the app went away mid-run: the next connection is another run
                print(f"codejail zygote: {exc!r}", file=sys.stderr)
                continue
        if outcome == "retire" and not retiring:  # a successor listens in our place now
            retiring = True
            listener.setblocking(False)  # serve what was queued before, then go
        elif outcome == "over":
            return


def serve(conn, listener, layer, config, run_env, lifetime, full=None):
    """
    One run: fork it (or have the full zygote fork it), tell the app its pid, wait for it, tell the
    app its status. "retire" if the app said this zygote's successor is in place, "over" if it may
    take no more runs (or its full zygote has gone).
    """
    message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
    if not message and not fds:  # the app only looked whether a zygote is there (start_all)
        return None
    try:
        request = json.loads(message)
        if request.get("retire") is True and not fds:
            return "retire"
        if len(fds) != 3:
            raise ValueError(f"expected 3 descriptors, got {len(fds)}")
    except (ValueError, AttributeError) as exc:
        for fd in fds:
            os.close(fd)
        conn.send(json.dumps({"error": str(exc)}).encode())
        return None
    retire = lifetime.served(request)
    if full is None or request.get("light") is True:
        sockets, kind = ((conn, listener), "full") if full is None else ((conn, listener, full), "light")
        serve_run(conn, request, fds, sockets, layer, config, run_env, retire, kind)
    elif not forward(full, request, fds, conn, retire):
        return "over"  # the app sees this connection close: its run starts elsewhere
    return "over" if lifetime.over(request) else None


def forward(full, request, fds, conn, retire):
    """
    Hand the run to the full zygote (the request, its three descriptors and the app's connection,
    which it answers on) and wait until it has served it; False if the full zygote has gone.
    """
    try:
        try:
            socket.send_fds(full, [json.dumps({"request": request, "retire": retire}).encode()],
                            [conn.fileno(), *fds])
        finally:
            for fd in fds:  # the run's pipes are the full zygote's now: the app reads their end as the run's
                os.close(fd)
        return full.recv(16) == b"done"
    except OSError as exc:
        print(f"codejail zygote: the full zygote has gone: {exc!r}", file=sys.stderr)
        return False


def serve_forwarded(pair, layer, config, run_env, learned=None):
    """
    The full zygote's loop: serve each run the light zygote hands over, until it has gone, each
    in a spare child forked before its run came (``Spare``), which copied ahead what a run of the
    packages the run before it used writes (``learned``: ``learn_copies``).
    """
    spare = Spare(pair, layer, config, run_env, learned)
    spare.fork()
    while True:
        message, fds, _, _ = socket.recv_fds(pair, MAX_MESSAGE, 4)
        if not message:  # the light zygote has gone (or sent nothing we can serve); so goes the spare
            for fd in fds:
                os.close(fd)
            return
        with socket.socket(fileno=fds.pop(0)) as conn:
            forwarded = json.loads(message)
            try:
                serve_run(conn, forwarded["request"], fds, (conn, pair), layer, config, run_env, forwarded["retire"],
                          "full", spare)
            except OSError as exc:  # the app went away mid-run
                print(f"codejail zygote: {exc!r}", file=sys.stderr)
        pair.send(b"done")
        spare.fork(forwarded["request"].get("uses", ()))  # if serve_run could not


class Spare:
    """
    The full zygote's next run, forked ahead: a fork of the full preload costs ~5 ms (its page
    tables), now off the run's path, as the run before it starts. The spare first copies ahead
    the pages a run of the packages that run uses would write (``learn_copies``: a course's
    problem is mostly answered many times in a row), until its own run comes. It then waits,
    still the zygote's (its session, group, profile and filter), for the run's request and
    descriptors on its own socket pair, and becomes the run exactly as a child forked for it
    would (``run``). It holds nothing of the zygote's but its memory: every other descriptor is
    closed as it is born. It exits once the zygote has gone (its pair's end of file) or closes
    its end.

    It is one more process of the slot's user while a run runs: ``BESIDE``.
    """

    def __init__(self, pair, layer, config, run_env, learned=None):
        self.pair, self.layer, self.config, self.run_env = pair, layer, config, run_env
        self.learned = learned or {}
        self.madvise = madvise() if self.learned else None
        self.pid = self.sock = None

    def fork(self, uses=()):
        """
        Fork the spare, if there is none, to copy ahead what a run of ``uses`` (top-level package
        names) writes; without one (said on stderr), runs are forked as they come.
        """
        if self.pid is not None:
            return
        ranges = [span for name in sorted(set(uses)) for span in self.learned.get(name, ())]
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            pid = os.fork()
        except OSError as exc:
            print(f"codejail zygote: no spare: {exc!r}", file=sys.stderr)
            return
        if pid == 0:  # pragma: no cover -- the spare (tests/test_zygote.py, and live)
            self._wait(ours, theirs, ranges)
        theirs.close()
        self.pid, self.sock = pid, ours

    def take(self, request, fds, mapped):
        """
        Hand the run (``request``, ``fds``, and ``run``'s ``mapped``) to the spare; its pid, or
        None if there is none or it has gone.
        """
        pid, sock, self.pid, self.sock = self.pid, self.sock, None, None
        if pid is None:
            return None
        with sock:
            try:
                message = {"request": request, "mapped": mapped}
                socket.send_fds(sock, [json.dumps(message).encode()], fds)
                return pid
            except OSError as exc:
                print(f"codejail zygote: the spare has gone: {exc!r}", file=sys.stderr)
        os.waitpid(pid, 0)  # it has exited, or does now: its end of file
        return None

    def _wait(self, ours, theirs, ranges):  # pragma: no cover -- in the forked spare
        status = 0
        try:
            self.pair.close()
            ours.close()
            own = theirs.fileno()
            os.closerange(3, own)
            os.closerange(own + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            self._copy(ranges, theirs)
            message, fds, _, _ = socket.recv_fds(theirs, 2 * MAX_MESSAGE, len(RUN_FDS))  # a request, and what take adds
            if message:
                handed = json.loads(message)
                run(handed["request"], fds, (theirs,), self.layer, self.config, self.run_env, handed["mapped"])
        except BaseException:  # the zygote's own failure: said where the app looks, once it is a run
            status = 1
            os.write(2, f"codejail zygote: the spare could not start:\n{traceback.format_exc()}".encode())
        finally:
            os._exit(status)

    def _copy(self, ranges, sock):
        """
        Copy ``ranges`` of its memory (MADV_POPULATE_WRITE), a batch at a time, until its run
        comes on ``sock``: the run is not kept waiting, and copies the rest as it writes to it.
        """
        arrived = select.poll()
        arrived.register(sock, select.POLLIN)
        for start in range(0, len(ranges), COPY_BATCH):
            if arrived.poll(0):
                return
            for address, size in ranges[start:start + COPY_BATCH]:
                self.madvise(address, size, MADV_POPULATE_WRITE)  # a range unmapped since: nothing to copy


# Ranges a spare copies between two looks whether its run has come (~0.1 ms).
COPY_BATCH = 16


def serve_run(conn, request, fds, sockets, layer, config, run_env, retire, kind, spare=None):
    """
    Start the run of ``request`` with its descriptors ``fds`` (in the ``spare``, if one waits;
    else forked now), tell the app its pid on ``conn``, wait for it (supervised: end it and clean
    up after it), tell the app its status and what the run used, with which zygote ran it
    (``kind``, "light" or "full"). ``sockets``: this zygote's, which the run must not keep.
    The next run's spare is forked as this one starts (``Spare.fork``).

    The status goes as soon as the run has said it (``say_done``), before its process has
    finished exiting; what the run used, with ``"ended"``, once it is reaped and its tmp/ empty.
    """
    mapped = address_space()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ending, ending_w = os.pipe()
    fds = [*fds, ending_w]  # RUN_FDS
    pid = spare.take(request, fds, mapped) if spare is not None else None
    if pid is None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover -- the run (tests/test_zygote.py, and live)
            run(request, fds, sockets, layer, config, run_env, mapped)
    stderr = fds.pop(2)  # for the note of a run ended past its bounds (supervise_run)
    for fd in fds:
        os.close(fd)
    reply = {"pid": pid, "zygote": os.getpid()}
    if retire:
        reply["retire"] = True
    # The run is waited for (and, supervised, ended and cleaned up) even when the app has gone:
    # its slot's next run must find nothing of it.
    told = _tell(conn, reply)
    if spare is not None:
        spare.fork(request.get("uses", ()))

    def said(status):  # the app reads the end of the run's stderr once this copy is closed too
        nonlocal told, stderr
        os.close(stderr)
        stderr = None
        told = told and _tell(conn, {"status": status})

    try:
        if supervises(config):
            wait_status, ending_seconds, status = supervise_run(pid, request, layer, config, mapped, stderr, ending,
                                                                said)
        else:
            (_, wait_status), ending_seconds, status = os.waitpid(pid, 0), 0.0, None
    finally:
        if stderr is not None:
            os.close(stderr)
        os.close(ending)
    if told:
        _tell(conn, {"status": os.waitstatus_to_exitcode(wait_status) if status is None else status,
                     "counts": dict(run_counts(before, ending_seconds), zygote=kind), "ended": True})


def _tell(conn, message):
    """Send ``message`` to the app; False if it has gone (said on stderr)."""
    try:
        conn.send(json.dumps(message).encode())
        return True
    except OSError as exc:
        print(f"codejail zygote: the app has gone: {exc!r}", file=sys.stderr)
        return False


def supervise_run(pid, request, layer, config, mapped, stderr, ending, said):
    """
    Be the reaper of the run ``pid`` (confinement/reaper.py), as a fresh run's own reaper
    process is: wait until it exits, says it is done on ``ending`` (its end of the RUN_FDS pipe:
    ``say_done``), or its processes together go past their memory or CPU bound (from the run's
    rlimits, as the run states them); then kill its process group (every process of the run:
    none can leave it), reap them all (this zygote is their subreaper) and empty its tmp/.

    A run that said its status has closed its output and has only its exit left: ``said`` is
    called with that status as its process group is killed, so the app may answer while the
    process still unmaps its memory. Whatever the code wrote there instead (it may write to any
    of its descriptors) only ends it sooner: the code could have exited with any status itself.

    ``(wait status, seconds to end the run once its process had exited, status it said or None)``.
    Nothing here may raise: the zygote serves on.
    """
    limits = {name: soft for name, soft, _ in request["rlimits"]}
    memory = layer.reaper.memory_bound(config, soft=limits.get(resource.RLIMIT_AS, resource.RLIM_INFINITY))
    cpu = layer.reaper.cpu_bound(config, soft=limits.get(resource.RLIMIT_CPU, resource.RLIM_INFINITY))
    watchdog = layer.reaper.RunWatchdog(memory, cpu, group=pid) if memory or cpu else None
    heard = []
    status = layer.reaper.watch(pid, watchdog, stderr=stderr, group=pid, ending=(ending, heard.append))
    status_said = exit_status(heard[0]) if heard else None
    if status is None:  # it said it is done: it ends now, and is reaped once it has exited
        try:
            os.kill(-pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if status_said is not None:
            said(status_said)
        status = os.waitpid(pid, 0)[1]
    ended = time.perf_counter()
    layer.reaper.kill_the_rest(group=pid)
    home = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        os.chdir(request["cwd"])
        layer.reaper.empty_run_tmp()
    except OSError as exc:
        print(f"codejail zygote: cannot empty the run's tmp/: {exc!r}", file=sys.stderr)
    finally:
        os.fchdir(home)
        os.close(home)
    return status, time.perf_counter() - ended, status_said


def exit_status(said):
    """
    The exit status a run said (``say_done``: its decimal digits, bytes), or None if it is not one
    (something the code wrote there).
    """
    try:
        status = int(said.decode("ascii"), 10)
    except (UnicodeDecodeError, ValueError):
        return None
    return status if 0 <= status <= 255 and said == str(status).encode() else None


def run_counts(before, ending):
    """
    What the run's processes used (all reaped by now), for the app's per-stage figures (``make
    bench``): CPU milliseconds, minor page faults (mostly copy-on-write copies of the zygote's
    pages), and the milliseconds this zygote took to end the run once its process had exited.
    """
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"cpu-ms": round(cpu * 1000, 1), "faults": after.ru_minflt - before.ru_minflt,
            "reap-ms": round(ending * 1000, 1)}


def address_space():
    """
    Bytes of address space this process maps now (/proc/self/statm, opened once), or 0 if that
    cannot be read.
    """
    global _statm  # opened once, read at every run
    try:
        if _statm is None:
            _statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_statm, 128, 0).split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError) as exc:
        print(f"codejail zygote: cannot read its address space: {exc!r}", file=sys.stderr)
        return 0


_statm = None


# RLIMIT_NPROC counts every process of the slot's user. Beside a fresh run's code there are two
# (its leader and reaper), as beside a warm run there are its two zygotes; and the full zygote's
# spare (``Spare``), so a warm run's limit counts it too.
BESIDE = 1


def run_rlimits(rlimits, mapped):
    """
    The run's rlimits: as codejail asks, but RLIMIT_AS (codejail's VMEM) counts from what the
    zygote has mapped (``mapped`` bytes, the preloaded modules), so that a run may allocate as
    much as a fresh interpreter's could, not that much less what it did not import; and
    RLIMIT_NPROC counts ``BESIDE`` more processes of the slot's user than a fresh run's own.
    """
    for name, soft, hard in rlimits:
        extra = mapped if name == resource.RLIMIT_AS else BESIDE if name == resource.RLIMIT_NPROC else 0
        if extra:
            soft, hard = (limit if limit == resource.RLIM_INFINITY else limit + extra for limit in (soft, hard))
        yield name, soft, hard


APPARMOR_ZYGOTE, APPARMOR_SANDBOX = "//codejail_zygote", "//codejail_sandbox"
APPARMOR_ATTRS = ("/proc/self/attr/apparmor/current", "/proc/self/attr/current")


def apparmor_enter_sandbox(attrs=APPARMOR_ATTRS):
    """
    If AppArmor confines this process as a zygote (apparmor/: ``<service>//codejail_zygote``,
    which may use its socket), move it to the sandbox profile beside it (``//codejail_sandbox``,
    a fresh run's: no socket at all). Else nothing. Raises if AppArmor cannot tell or refuses: the
    run must not start in the zygote's profile.
    """
    for attr in attrs:
        try:
            with open(attr, encoding="utf-8") as current:
                label = current.read().strip().split(" (")[0]
            break
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINVAL):  # no such interface, no LSM behind it
                continue
            raise
    else:
        return
    if not label.endswith(APPARMOR_ZYGOTE):
        return  # unconfined (no AppArmor policy for us) or another LSM's label
    with open(attr, "w", encoding="utf-8") as current:
        current.write(f"changeprofile {label[: -len(APPARMOR_ZYGOTE)]}{APPARMOR_SANDBOX}")


def run(request, fds, sockets, layer, config, run_env, mapped=0):  # pragma: no cover -- in the forked child
    """In the forked child: become a fresh run, confine, run jailed_code; never returns."""
    status = 1
    try:
        for sock in sockets:
            sock.close()
        for target, fd in enumerate(fds):  # RUN_FDS: over the zygote's stdin (its listener) and stdio
            os.dup2(fd, target)
        os.closerange(len(RUN_FDS), resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # nothing of the zygote's
        os.setsid()  # a process group of its own, as codejail's preexec gives a fresh run
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # a fresh process's (the zygote waits for SIGCHLD)
        os.chdir(request["cwd"])
        for name, soft, hard in run_rlimits(request["rlimits"], mapped):
            resource.setrlimit(name, (soft, hard))
        os.environ.clear()
        os.environ.update(run_env, TMPDIR="tmp")  # as sudo gives a fresh run (env_keep TMPDIR)
        apparmor_enter_sandbox()  # where AppArmor confines: the profile a fresh run would get
        layer.ADDRESS_SPACE_OFFSET = mapped  # the run's memory bound counts from its VMEM, as RLIMIT_AS
        layer.confine_or_exit(config, forked=True, forked_by="zygote")  # as the .pth hook: or refuse, run nothing
        status = exit_code(run_jailed_code())
        say_done(status)
    except BaseException:  # the zygote's own failure: say it where the app looks
        os.write(2, f"codejail zygote: the run could not start:\n{traceback.format_exc()}".encode())
    finally:
        os._exit(status)


# A run's descriptors, as its zygote hands them to it: the app's three pipes, and the pipe on
# which the run says its status to its zygote before it exits (``say_done``).
RUN_FDS = ("stdin", "stdout", "stderr", "ending")
ENDING = RUN_FDS.index("ending")


def say_done(status):  # pragma: no cover -- in the forked child
    """
    In the run, its code over and its output flushed: close every descriptor but ``ENDING`` (so
    the app reads the end of the run's output now), then say ``status`` there. Its zygote then
    tells the app, which answers while this process still unmaps its memory at exit (2-6 ms
    for a full run: its page tables and the pages it copied).
    """
    os.closerange(ENDING + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.closerange(0, ENDING)
    try:
        os.write(ENDING, str(status).encode())
    except OSError:
        pass  # the code closed it: its zygote hears of the run at its exit


def exit_code(status):
    """
    The exit status a fresh interpreter gives for ``sys.exit(status)`` (an int): CPython takes it
    as a C long (-1 past one), truncated to an int, of which the kernel keeps the low 8 bits.
    """
    return (status if -2**63 <= status < 2**63 else -1) & 0xFF


# The random generators the preloaded modules make, unseeded, as they are imported: each forked run
# reseeds them from os.urandom, as a fresh interpreter's import would have, so no two runs share a
# sequence (tests/lms_client/test_preload.py finds every module-level generator and checks this).
RESEED = ("random", "random2", "numpy.random")


def fresh_state():
    """In a forked run, before its code: what the zygote's imports left that a fresh run's would not."""
    for name in RESEED:
        module = sys.modules.get(name)
        if module is not None:
            module.seed()
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = None  # from TMPDIR=tmp, as a fresh interpreter would find it


def run_jailed_code():  # pragma: no cover -- in the forked child
    """As ``python jailed_code`` would: fresh stdio, fresh seeds, exit status and traceback."""
    fresh_state()
    # The zygote's own stdio was set up by this interpreter's start, as a fresh run's would be.
    encoding, errors = sys.__stdout__.encoding, sys.__stdout__.errors
    sys.stdin = sys.__stdin__ = open(0, encoding=encoding, errors=errors, closefd=False)
    stdout = sys.stdout = sys.__stdout__ = open(1, "w", encoding=encoding, errors=errors, closefd=False)
    stderr = sys.stderr = sys.__stderr__ = open(2, "w", encoding=encoding, errors="backslashreplace",
                                                closefd=False, buffering=1)
    sys.argv = ["jailed_code"]
    sys.path.insert(0, os.getcwd())  # as for a script: its directory first
    path = os.path.join(os.getcwd(), "jailed_code")  # absolute, as python names a script's file since 3.9
    # The code's first frame sits on ours and runpy's: give it the stack depth it would have as
    # a script, so a runaway recursion ends where a fresh interpreter's does (and says so alike).
    sys.setrecursionlimit(sys.getrecursionlimit() + _recursion_depth() + RUNPY_DEPTH)
    status = 0
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    except BaseException as exc:  # as the interpreter: print it, exit 1
        # From the code's own first frame, as a fresh interpreter's traceback starts: none of ours.
        # (The default hook prints the exception's own __traceback__, not its argument.)
        exc.__traceback__ = code_traceback(exc.__traceback__, path)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        status = 1
    # Ours, whatever the code put in sys.stdout (codejail's wrapper writes to sys.__stdout__).
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except OSError:
            status = status or 120  # as the interpreter, when it cannot flush at exit
    return status


# What runpy.run_path and exec add to the recursion depth between their caller and the code's
# first frame, less that frame's own 1 in a fresh interpreter (test_zygote compares the two).
RUNPY_DEPTH = 3


def _recursion_depth():
    """The caller's recursion depth as the recursion limit counts it (Python frames and C calls)."""
    headroom = 0

    def deeper():
        nonlocal headroom
        headroom += 1
        deeper()

    try:
        deeper()
    except RecursionError:
        pass
    return sys.getrecursionlimit() - headroom


def code_traceback(tb, path):
    """``tb`` from its first frame in ``path`` on (None if it has none: e.g. a SyntaxError in it)."""
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    return tb


if __name__ == "__main__":
    main()
