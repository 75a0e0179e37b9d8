"""
Course-style scripts, as problems' ``<script type="loncapa/python">`` and check functions are
written, each with what the LMS must get back. The client wraps each in its prolog (seeded
``random2`` as ``random``, lazy ``numpy``/``scipy``/``calc``/``chemcalc``/``draganddrop``...).

``Case.expect``: a dict of globals the answer must contain (compared with ==), or a callable
taking the globals; ``Case.error``: fragments the ``SafeExecException`` must contain instead.
"""
import dataclasses
import io
import zipfile

# A course given more CPU by a limit override (the service's CODE_JAIL and the local codejail alike).
HEAVY_COURSE = "course-v1:edX+Heavy+2026"
COURSE = "course-v1:edX+Test+2026"


@dataclasses.dataclass
class Case:
    name: str
    code: str
    globals: dict = dataclasses.field(default_factory=dict)
    expect: object = None
    error: tuple = ()
    seed: int = 1
    course: str = COURSE  # the limit_overrides_context the LMS sends
    library: bool = False  # sends python_lib.zip with python_path ["python_lib.zip"]
    darklaunch: bool = True
    status: str = "ok"  # what the LMS's own sandbox gives: "ok", or "safe_error" (parity.py)


def python_lib_zip():
    """A course library as authors upload it (Files & Uploads: python_lib.zip)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("course_tools/__init__.py", "from .grading import close_enough, grade_all\n")
        archive.writestr("course_tools/grading.py", (
            "def close_enough(expected, given, tolerance=0.01):\n"
            "    expected, given = float(expected), float(given)\n"
            "    return abs(expected - given) <= tolerance * max(abs(expected), 1e-12)\n"
            "\n"
            "def grade_all(pairs):\n"
            "    return [close_enough(e, g) for e, g in pairs]\n"
            "\n"
            "def broken(answer):\n"
            "    return {'ok': True}[answer]\n"
        ))
    return buffer.getvalue()


def _seeded_random(globals_):
    import random2  # the LMS's stand-in for random, seeded with the problem's seed

    rng = random2.Random(7)
    expected = [rng.randint(1, 100), rng.choice("abcdef"), rng.sample(range(50), 4), round(rng.uniform(0, 1), 12)]
    assert [globals_["n"], globals_["letter"], globals_["picks"], globals_["u"]] == expected, globals_


TWO_MIB = "x" * (2 * 1024 * 1024)
WIDE = "é𝄞中" * 1000

SUCCESSES = [
    Case("seeded_random", "n = random.randint(1, 100)\nletter = random.choice('abcdef')\n"
         "picks = random.sample(range(50), 4)\nu = round(random.uniform(0, 1), 12)\n",
         seed=7, expect=_seeded_random),
    Case("numpy", "a = numpy.linalg.solve([[3, 1], [1, 2]], [9, 8]).tolist()\n"
         "m = float(numpy.mean([1, 2, 3, 4]))\n", expect={"a": [2.0, 3.0], "m": 2.5}),
    Case("numpy_random_seeded", "numpy.random.seed(seed)\nv = numpy.random.randint(0, 1000, 3).tolist()\n",
         globals={"seed": 5}, expect=lambda g: len(g["v"]) == 3),
    Case("scipy", "from scipy import integrate, optimize\n"
         "area = round(integrate.quad(lambda t: t ** 2, 0, 3)[0], 9)\n"
         "root = round(optimize.brentq(lambda t: t ** 2 - 2, 0, 2), 9)\n",
         expect={"area": 9.0, "root": 1.414213562}),
    Case("sympy", "import sympy\nx = sympy.Symbol('x')\nd = str(sympy.diff(sympy.sin(x) * x, x))\n"
         "same = bool(sympy.simplify(sympy.sympify('(x+1)**2') - sympy.sympify('x**2+2*x+1')) == 0)\n",
         expect={"d": "x*cos(x) + sin(x)", "same": True}),
    Case("calc", "v = calc.evaluator({'x': 2}, {}, 'x^2 + 1')\n"
         "w = calc.evaluator({}, {}, '2*pi', case_sensitive=False) > 6.28\n", expect={"v": 5.0, "w": True}),
    # Importing chemcalc (nltk) takes about 1.15 s of CPU with the interpreter's start, at the
    # default CPU limit of 1 s, in a local codejail as in the service: its course has an override.
    Case("chemcalc", "same = chemcalc.compare_chemical_expression('H2O', 'H2O')\n"
         "balanced = chemcalc.chemical_equations_equal('H2 + O2 -> H2O2', 'O2 + H2 -> H2O2')\n",
         course=HEAVY_COURSE, expect={"same": True, "balanced": True}),
    Case("chem", "answer = chemtools.vsepr_build_correct_answer('AX4E0', {'c0': 'C', 'p0': 'H', 'p1': 'H', "
         "'p2': 'H', 'p3': 'H'})\n"
         "vsepr = chemtools.vsepr_grade(answer, answer)\n"
         "crystal = miller.grade('{\"lattice\": \"bcc\", \"points\": [[\"0.00\", \"0.00\", \"1.00\"], "
         "[\"1.00\", \"0.00\", \"1.00\"], [\"0.00\", \"1.00\", \"1.00\"]]}', "
         "{'miller': '(0,0,1)', 'lattice': 'bcc'})\n",
         expect={"vsepr": True, "crystal": True}),
    Case("draganddrop", "import json\n"
         "ok = draganddrop.grade(json.dumps([{'1': 't1'}, {'name_with_icon': 't2'}]), "
         "{'1': 't1', 'name_with_icon': 't2'})\n", expect={"ok": True}),
    Case("checker", "def check(expect, ans):\n"
         "    try:\n        return {'ok': abs(float(ans) - float(expect)) < 1e-3, 'msg': 'checked'}\n"
         "    except ValueError:\n        return {'ok': False, 'msg': 'not a number'}\n"
         "result = check(expect, ans)\nbad = check(expect, 'pi')\n",
         globals={"expect": "3.1416", "ans": "3.14159"},
         expect={"result": {"ok": True, "msg": "checked"}, "bad": {"ok": False, "msg": "not a number"}}),
    Case("python_lib_zip", "from course_tools import close_enough, grade_all\n"
         "verdicts = grade_all([(1.0, 1.005), (2.0, 3.0)])\n", library=True,
         expect={"verdicts": [True, False]}),
    Case("matplotlib", "import io\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
         "fig = plt.figure()\nplt.plot([1, 2, 3], [1, 4, 9])\nbuf = io.BytesIO()\nfig.savefig(buf, format='png')\n"
         "png = buf.getvalue()[:4] == b'\\x89PNG'\n", course=HEAVY_COURSE, expect={"png": True}),
    Case("unicode", "s2 = s.upper() + ' ✓ 𝄞'\nk = {'clé': 'ünïcödé'}\n", globals={"s": "grüße, 中文"},
         expect={"s2": "GRÜSSE, 中文 ✓ 𝄞", "k": {"clé": "ünïcödé"}}),
    Case("output_is_not_an_error", "print('hello to stdout')\nimport sys\nsys.stderr.write('a warning\\n')\nx = 1\n",
         expect={"x": 1}),
    Case("large_string_global", "n = len(big)\n", globals={"big": TWO_MIB},
         expect=lambda g: g["big"] == TWO_MIB and g["n"] == len(TWO_MIB)),
    # Made by the code: within CODEJAIL_MAX_OUTPUT_BYTES (1 MiB) beyond what the request brought.
    Case("large_made_global", "made = 'y' * (900 * 1024)\n", expect=lambda g: g["made"] == "y" * (900 * 1024)),
    Case("many_wide_globals", "total = sum(len(v) for v in values)\n",
         globals={"values": [WIDE] * 250}, expect=lambda g: g["total"] == 250 * len(WIDE) and g["values"][-1] == WIDE),
    Case("odd_globals", "t = (1, 2)\nnested = {1: [None, True, 2.5e-300]}\nhuge = 10 ** 100\n"
         "gone = {1, 2}\nraw = b'bytes'\nf = lambda: 1\n",
         expect=lambda g: (g["t"] == [1, 2] and g["nested"] == {"1": [None, True, 2.5e-300]}
                           and g["huge"] == 10 ** 100 and "gone" not in g and g["raw"] == "bytes" and "f" not in g)),
]

# What a grader's code can get wrong. Each must compare equal in darklaunch.
ERRORS = [
    Case("zero_division", "def grade(a, b):\n    return a / b\n\nratio = grade(1, 0)\n",
         error=("ZeroDivisionError: division by zero", "in grade")),
    Case("name_error", "answer = undefined_name + 1\n", error=("NameError: name 'undefined_name' is not defined",)),
    Case("syntax_error", "if x = 1:\n    pass\n", error=("SyntaxError",)),
    Case("key_error_in_checker", "def check(expect, ans):\n    return {'a': 1}[ans]\n\nr = check(1, 'b')\n",
         error=("KeyError: 'b'",)),
    Case("error_in_python_lib_zip", "from course_tools import grading\ngrading.broken('no')\n", library=True,
         error=("python_lib.zip/course_tools/grading.py", "KeyError: 'no'")),
    Case("chained", "try:\n    int('abc')\nexcept ValueError as exc:\n    raise RuntimeError('bad answer') from exc\n",
         error=("invalid literal for int()", "RuntimeError: bad answer")),
    Case("unicode_message", "raise ValueError('ungültige Antwort 𝄞 中文')\n", error=("ValueError",)),
    Case("numpy_error", "inverse = numpy.linalg.inv([[1, 2], [2, 4]])\n", error=("Singular matrix",)),
    Case("exit_status", "import sys\nsys.exit(3)\n", error=("with status code: 3",)),
    Case("exit_message", "raise SystemExit('the grader gave up')\n", error=("the grader gave up", "status code: 1")),
    Case("recursion", "def f(n):\n    return f(n + 1)\n\nf(0)\n", error=("RecursionError",)),
    Case("memory", "block = bytearray(2 * 1024 ** 3)\n", error=("MemoryError",)),
    Case("stdout_then_error", "import sys\nsys.__stdout__.write('partial output')\nassert 1 == 2, 'nope'\n",
         error=("partial output", "AssertionError: nope")),
    Case("time_limit", "import time\ntime.sleep(30)\n", error=("status code: -9",)),
    Case("cpu_limit", "while True:\n    pass\n", error=("status code: -",)),
]
