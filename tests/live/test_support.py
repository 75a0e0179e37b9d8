"""What graders need, the LMS protocol, and the limits that end runaway code."""
import io
import json
import os
import time
import zipfile

import pytest

from .conftest import sandbox_processes
from .probe import probe

# --- Protocol -------------------------------------------------------------------------------

def test_support_globals_in_and_out(run):
    result = run("y = x * 2\nz = {'k': [1, 2.5, None, 'é𝄞']}", globals_dict={"x": 21})
    assert result.status == 200 and result.content_type == "application/json", result
    assert result.emsg is None
    assert result.globals == {"x": 21, "y": 42, "z": {"k": [1, 2.5, None, "é𝄞"]}}


def test_support_nan_and_infinity_in_come_back_as_null(run, service):
    import requests
    payload = ('{"code": "b = a", "globals_dict": {"a": [NaN, Infinity, -Infinity]}, '
               '"python_path": [], "limit_overrides_context": null, "slug": null, "unsafely": false}')
    response = requests.post(service["url"] + "/api/v0/code-exec", data={"payload": payload}, timeout=30)
    assert response.status_code == 200, response.text
    # As the LMS parses it (requests + simplejson 3.20): bare NaN / Infinity would be refused.
    body = json.loads(response.text, parse_constant=lambda token: pytest.fail(f"bare {token} in the answer"))
    assert body["globals_dict"] == {"a": [None, None, None], "b": [None, None, None]}, body
    # In: the code saw real floats.
    result = run("import math\nok = [math.isnan(a[0]), a[1] == math.inf, a[2] == -math.inf]",
                 globals_dict={"a": [float("nan"), float("inf"), float("-inf")]})
    assert result.globals["ok"] == [True, True, True], result


def test_support_globals_as_large_as_a_request_allows_come_back_whole(run):
    """Any globals a request within CODEJAIL_MAX_REQUEST_BYTES brings come back (stdout's cap scales)."""
    big = "é" * (512 * 1024) + "x" * (4 * 1024 * 1024)  # about 8 MiB as sent (JSON escapes, then urlencoded)
    result = run("n = len(big)\nmade = 'y' * (512 * 1024)", globals_dict={"big": big}, timeout=(0.5, 60))
    assert result.emsg is None, str(result)[:2000]
    assert result.globals["big"] == big and result.globals["n"] == len(big)
    assert result.globals["made"] == "y" * (512 * 1024)


def test_support_traceback_in_emsg(run):
    result = run("def grade():\n    return 1 / 0\ngrade()", globals_dict={"x": 1})
    assert result.status == 200
    assert result.globals == {"x": 1}  # failed runs return the input globals
    assert result.emsg.startswith("Couldn't execute jailed code: stdout: b'', stderr: b'Traceback"), result
    assert "ZeroDivisionError: division by zero" in result.emsg and "with status code: 1" in result.emsg


def test_support_python_lib_zip(run):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("course_helpers.py", "def answer():\n    return 42\n")
    result = run("import course_helpers\nr = course_helpers.answer()", python_path=["python_lib.zip"],
                 files={"python_lib.zip": ("python_lib.zip", buf.getvalue(), "application/zip")})
    assert result.globals.get("r") == 42, result


# --- Grader libraries ----------------------------------------------------------------------------

LMS_PROLOG = "import os\nos.environ['OPENBLAS_NUM_THREADS'] = '1'\nimport random2 as random\nrandom.seed(42)\n"


def test_support_numpy(run):
    result = run(LMS_PROLOG + "import numpy as np\nr = float(np.linalg.inv(np.array([[2.0, 0], [0, 4.0]]))[1][1])")
    assert result.globals.get("r") == 0.25, result


def test_support_unseeded_random_differs_between_runs(run):
    # Each run seeds from os.urandom, fresh interpreter or forked by a zygote (ADR 7).
    code = "import random\nimport numpy\nr = [random.random(), float(numpy.random.random())]"
    first, second = run(code).globals.get("r"), run(code).globals.get("r")
    assert first and second and first[0] != second[0] and first[1] != second[1], (first, second)


def test_support_scipy_and_sympy(run):
    result = run(LMS_PROLOG + "import scipy.optimize, sympy\n"
                 "root = round(float(scipy.optimize.brentq(lambda v: v * v - 2, 0, 2)), 6)\n"
                 "d = str(sympy.diff(sympy.Symbol('t') ** 3))\nr = [root, d]")
    # A fresh interpreter (the opt-out), and a zygote's run for sympy without the LMS's own prolog
    # (here random is not put in sys.modules: sympy comes from disk, not the zygote: ADR 7), spends
    # close to the 1 s CPU limit importing these.
    _assert_right_or_killed_on_cpu_unless_preloaded(result, [1.414214, "3*t**2"], ("scipy.optimize", "sympy"))


def test_support_matplotlib(run):
    result = run(LMS_PROLOG + "os.environ['MPLCONFIGDIR'] = 'tmp'\nimport matplotlib\nmatplotlib.use('Agg')\n"
                 "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.savefig('tmp/plot.png')\n"
                 "size = os.path.getsize('tmp/plot.png')\nr = size > 1000")
    # A fresh interpreter (the opt-out) spends 0.8-1.0 s of the 1 s CPU limit here (its font list).
    _assert_right_or_killed_on_cpu_unless_preloaded(result, True, ("matplotlib",))


def test_support_networkx_and_calc(run):
    result = run(LMS_PROLOG + "import networkx as nx\nfrom calc import evaluator\n"
                 "g = nx.path_graph(5)\nn = nx.shortest_path_length(g, 0, 4)\n"
                 "v = evaluator({'x': 3}, {}, '2*x+1')")
    assert result.globals.get("n") == 4 and result.globals.get("v") == 7.0, result


# --- Limits ---------------------------------------------------------------------------------------

@pytest.mark.outside_layer  # RLIMIT_NPROC
def test_deny_fork_bomb(run):
    result = run("import os, time\npids = []\ntry:\n    while True:\n        pid = os.fork()\n"
                 "        if pid == 0:\n            time.sleep(2)\n            os._exit(0)\n"
                 "        pids.append(pid)\nexcept BlockingIOError as e:\n    err = e.errno\nn = len(pids)")
    assert result.globals.get("err") == 11, result  # EAGAIN
    assert result.globals["n"] < 15


def test_deny_processes_outliving_the_run(run, service):
    # Children left sleeping must not hold the response open (codejail reads its
    # pipes to EOF) nor keep the sandbox UID's NPROC budget for the next runs.
    start = time.monotonic()
    # 10: of NPROC 15, the run's leader and reaper take two, the code one, a warm zygote one.
    result = run("import os, time\nfor _ in range(10):\n    if os.fork() == 0:\n"
                 "        time.sleep(2.5)\n        os._exit(0)\nr = 1")
    elapsed = time.monotonic() - start
    left = sandbox_processes() if service["local"] else []
    assert result.emsg is None and result.globals.get("r") == 1, result
    assert elapsed < 2.0, f"the response waited {elapsed:.1f} s for leftover processes"
    assert left == [], f"processes of the run outlived its response: {left}"
    after = run(LMS_PROLOG + "import numpy\nok = 1")
    assert after.globals.get("ok") == 1, after


def test_allow_short_lived_children(run):
    assert probe(run, "import os\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n"
                      "        os._exit(0)\n    os.waitpid(pid, 0)") == "ok"


@pytest.mark.outside_layer  # RLIMIT_AS
def test_deny_huge_allocation(run):
    result = run("try:\n    b = bytearray(1024 ** 3)\n    outcome = 'allocated'\nexcept MemoryError:\n"
                 "    outcome = 'MemoryError'")
    assert result.globals.get("outcome") == "MemoryError", result


def test_allow_moderate_allocation(run):
    result = run("b = bytearray(100 * 1024 ** 2)\nn = len(b)")
    assert result.globals.get("n") == 100 * 1024 ** 2, result


@pytest.mark.outside_layer  # codejail's REALTIME limit
@pytest.mark.parametrize("prelude", ["", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"])
def test_deny_sleep_past_realtime(run, prelude):
    # First a plain run: without our layer (the AppArmor VM), a killed run's slot is recovered
    # with its zygote, and the next run there waits for a new zygote's preload; not timed here.
    run("r = 1")
    result = run(prelude + "import time\ntime.sleep(20)")
    assert result.emsg and result.emsg.endswith("with status code: -9"), result
    # The attempt answered (``run`` retries answers shed while the slots were busy: not the run's time).
    assert result.seconds < 6, f"answered after {result.seconds:.2f} s"


@pytest.mark.outside_layer  # RLIMIT_CPU (hard limit: SIGKILL)
def test_deny_busy_loop_ignoring_sigxcpu(run):
    result = run("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass")
    assert result.emsg and "with status code: -9" in result.emsg, result


def test_allow_short_sleep(run):
    result = run("import time\ntime.sleep(0.3)\nr = 1")
    assert result.globals.get("r") == 1, result


def test_support_no_sandbox_process_left_after_runs(run, service):
    if not service["local"]:
        pytest.skip("the host's processes can only be checked where the service runs")
    run("import os\nfor _ in range(3):\n    if os.fork() == 0:\n        import time; time.sleep(1); os._exit(0)\nr = 1")
    deadline = time.monotonic() + 8
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sandbox_processes() == []


def test_support_health_reports_the_confinement_layers(service):
    import requests

    from .conftest import SABOTAGE, WARM
    health = requests.get(service["url"] + "/health/", timeout=10)
    layers = health.json()["checks"]["confinement_layers"]
    # The probe run was forked by its slot's zygote exactly in the warm-sandbox run.
    assert layers["warm_sandbox"] is WARM, layers
    if SABOTAGE:
        assert layers["mode"] == "off" and health.status_code == 503, health.text
    else:
        assert health.status_code == 200, health.text
        assert layers["mode"] == "enforce" and layers["missing"] == [], layers
        assert layers["layers"] == ["landlock.fs", "landlock.net", "landlock.scope", "seccomp", "reaper"]


def test_support_health_reports_each_slot_capped(service):
    # Every deployment we test (a host provisioned by deploy/provision.sh, the image with the
    # runtime's tmpfs per slot, the Tutor plugin's compose service) caps what a run writes; the
    # deny test test_deny_filling_tmp_beyond_a_total_cap shows the cap holds.
    import requests

    cap = requests.get(service["url"] + "/health/", timeout=10).json()["checks"]["run_dir_cap"]
    assert cap["passed"] is True and cap["capped"] is True, cap
    assert 0 < cap["bytes_per_run"] <= 64 * 1024 * 1024, cap


def test_support_health_reports_the_sandboxs_python_and_packages(service):
    """What the sandbox runs code with, read by the web app (under its AppArmor profile, in the VM)."""
    import requests

    sandbox = requests.get(service["url"] + "/health/", timeout=10).json()["sandbox"]
    assert "error" not in sandbox, sandbox
    assert sandbox["python"].startswith("3.") and "numpy" in sandbox["packages"], sandbox


# The operator's extra sandbox package (CODEJAIL_EXTRA_PIP_REQUIREMENTS): `make test-live` provisions
# the host with it and `make test-image` builds the image with it; each names it here.
EXTRA_PACKAGE = os.environ.get("CODEJAIL_LIVE_EXTRA_PACKAGE", "")


@pytest.mark.skipif(not EXTRA_PACKAGE, reason="CODEJAIL_LIVE_EXTRA_PACKAGE names no extra sandbox package")
def test_support_operator_extra_package(run):
    name, _, version = EXTRA_PACKAGE.partition("==")
    result = run(f"import importlib.metadata, {name}\nversion = importlib.metadata.version({name!r})\n"
                 f"where = {name}.__file__")
    assert result.emsg is None, result
    assert result.globals["version"] == version, result
    assert result.globals["where"].startswith("/opt/codejail-service/sandbox-venv/"), result


def test_support_a_package_nobody_installed_is_not_importable(run):
    # The twin: a package nobody installed is not importable, so the test above proves the install.
    result = run("try:\n    import tabulate_not_installed_here\n    found = True\n"
                 "except ImportError:\n    found = False")
    assert result.globals.get("found") is False, result


# What the LMS puts before course code (benchmarks/lms_prolog.py has it verbatim): the parts that
# change how course packages behave in the sandbox (random2's seeded Random as the random module).
LMS_CODE_PROLOG = ('import os\nos.environ["OPENBLAS_NUM_THREADS"] = "1"\n'
                   'os.environ["TMPDIR"] = os.getcwd() + "/tmp"\nos.environ["MPLCONFIGDIR"] = os.environ["TMPDIR"]\n'
                   "import random2 as random_module\nimport sys\nrandom = random_module.Random(4)\n"
                   "random.Random = random_module.Random\nrandom.SystemRandom = random_module.SystemRandom\n"
                   "sys.modules['random'] = random\n")


@pytest.mark.parametrize(("code", "want", "modules"), [
    ("import io\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
     "fig, ax = plt.subplots()\nax.plot([1, 2], [2, 1])\nbuf = io.BytesIO()\nfig.savefig(buf, format='png')\n"
     "r = buf.getvalue()[:4] == b'\\x89PNG'", True, ("matplotlib",)),
    ("from scipy import optimize\nr = round(float(optimize.brentq(lambda t: t * t - 2, 0, 2)), 6)", 1.414214,
     ("scipy.optimize",)),
    ("import sympy\nx = sympy.symbols('x')\nr = str(sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2))", "1",
     ("sympy",)),
    ("import calc\nr = calc.evaluator({'x': 2}, {}, 'x^2 + 1')", 5.0, ("calc",)),
    ("import networkx, lxml.etree\nr = networkx.number_of_nodes(networkx.path_graph(4)), "
     "lxml.etree.fromstring('<a><b/></a>')[0].tag", [4, "b"], ("networkx", "lxml.etree")),
], ids=["matplotlib", "scipy", "sympy", "calc", "networkx-lxml"])
def test_allow_course_packages_under_the_lms_prolog(run, code, want, modules):
    """
    What course graders import works under the LMS's prolog, within the limits where the zygotes
    preloaded it. A fresh interpreter spends 0.3-1.2 s of the 1 s CPU limit importing these (make
    bench-imports): there, a run may be killed on CPU (-24: SIGXCPU, -9). The zygotes hold sympy
    and networkx for code under the LMS's prolog (ADR 7): warm, each must answer.
    """
    _assert_right_or_killed_on_cpu_unless_preloaded(run(LMS_CODE_PROLOG + code), want, modules, lms_prolog=True)


def test_a_held_package_holds_the_runs_own_random_under_the_lms_prolog(run):
    """Warm or fresh, networkx and sympy hold the prolog's per-run random, not one of the zygote's."""
    result = run(LMS_CODE_PROLOG + "import networkx, sympy.core.random\n"
                 "r = [networkx.utils.misc.random is random, sympy.core.random._random is random]")
    _assert_right_or_killed_on_cpu_unless_preloaded(result, [True, True], ("networkx", "sympy"), lms_prolog=True)


def _assert_right_or_killed_on_cpu_unless_preloaded(result, want, modules, lms_prolog=False):
    """
    ``want``, where the warm sandbox preloaded all of ``modules`` (or holds them, for code under the
    LMS's prolog: ``lms_prolog``); else ``want`` or killed on CPU.
    """
    from codejail_service.confinement.zygote import HELD, PRELOAD

    from .conftest import WARM

    ready = set(PRELOAD) | (set(HELD) if lms_prolog else set())
    if (WARM and set(modules) <= ready) or result.globals.get("r") == want:
        assert result.globals.get("r") == want, result
    else:
        assert result.emsg and result.emsg.endswith(("with status code: -9", "with status code: -24")), result


def test_allow_chemcalc_under_the_lms_prolog(run):
    """
    chem.chemcalc, the LMS's lazy ``chemcalc``: importing it costs about the 1 s CPU limit (nltk;
    1.24 s here), so a fresh run gives the answer or is killed on CPU, as in the LMS's own sandbox;
    the zygotes hold it for code under the LMS's prolog (ADR 7): a warm run answers.
    """
    result = run(LMS_CODE_PROLOG + "import chem.chemcalc\n"
                 "r = chem.chemcalc.chemical_equations_equal('H2 + O2 -> H2O2', '2H2 + 2O2 -> 2H2O2')")
    _assert_right_or_killed_on_cpu_unless_preloaded(result, True, ("chem.chemcalc",), lms_prolog=True)


def test_support_matplotlib_leaves_no_temporary_directory(run, service):
    """Neither a run's matplotlib nor a zygote's preload leaves a cache directory in /tmp."""
    if not service["local"]:
        pytest.skip("the host's /tmp can only be checked where the service runs")
    import glob
    import os
    import pwd

    def sandbox_owned():
        owned = set()
        for path in glob.glob("/tmp/matplotlib-*"):
            try:
                if pwd.getpwuid(os.stat(path).st_uid).pw_name.startswith("codejail-sandbox"):
                    owned.add(path)
            except (OSError, KeyError):
                pass
        return owned

    before = sandbox_owned()
    result = run("import matplotlib.pyplot as plt\nplt.figure()\nr = 1")
    _assert_right_or_killed_on_cpu_unless_preloaded(result, 1, ("matplotlib",))
    assert sandbox_owned() == before == set()
