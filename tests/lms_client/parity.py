"""
The parity corpus: graders as course authors write them, for what the LMS's own sandbox (the Open
edX platform's packages: numpy 1, scipy, sympy, matplotlib, lxml with html-clean, chem, calc,
codejail-includes, networkx, nltk) does and a sandbox of other versions, or a preload done before
the LMS's prolog, would do otherwise (issue 18). Each runs in darklaunch: the local codejail with
the platform's pins and the service must agree on status, emsg and globals.

``Case.status``: "ok" or "safe_error", what the LMS itself gives; ``Case.expect``, where given,
holds the LMS's values, to show what each case is about (numpy 1's arithmetic, numpy 1's reprs).
"""
from tests.lms_client.corpus import HEAVY_COURSE, Case

NUMPY1_IDIOMS = [
    Case("numpy1_aliases", "import numpy as np\n"
         "values = [float(np.float_(2.5)), bool(np.isnan(np.NaN)), bool(np.isinf(np.Inf)),\n"
         "          int(np.product([1, 2, 3, 4])), bool(np.alltrue([True, True])), float(np.round_(2.345, 2)),\n"
         "          np.asfarray([1, 2]).tolist(), float(np.trapz([1, 2, 3])), np.mat([[1, 2], [3, 4]]).tolist(),\n"
         "          np.in1d([1, 5], [1, 2]).tolist()]\n",
         expect={"values": [2.5, True, True, 24, True, 2.35, [1.0, 2.0], 4.0, [[1, 2], [3, 4]], [True, False]]}),
    Case("numpy1_percentile_interpolation", "import numpy as np\n"
         "low = float(np.percentile([1, 2, 3, 4], 50, interpolation='lower'))\n"
         "high = float(np.percentile([1, 2, 3, 4], 50, interpolation='higher'))\n", expect={"low": 2.0, "high": 3.0}),
    Case("numpy1_ptp_cast_copy", "import numpy as np\n"
         "spread = int(np.array([1, 5, 3]).ptp())\ncast = np.cast['f8']([1, 2]).tolist()\n"
         "same = np.array([1, 2], copy=False).tolist()\n",
         expect={"spread": 4, "cast": [1.0, 2.0], "same": [1, 2]}),
    Case("numpy_scalar_promotion", "import numpy as np\n"
         "wrapped = int(np.uint8(250) + 10)\nsmall = repr(np.float32(0.1) + 0.2)\n"
         "mixed = repr(np.array([1, 2], dtype=np.uint8) + 300)\nhalf = float(np.float16(0.1) * 3)\n",
         expect={"wrapped": 260, "small": "0.30000000149011613"}),
    Case("numpy_random_seeded_by_problem", "import numpy as np\nnp.random.seed(seed)\n"
         "draws = np.random.randint(0, 1000, 5).tolist()\nnormal = round(float(np.random.normal()), 12)\n"
         "rng = np.random.default_rng(seed)\nmodern = rng.integers(0, 1000, 3).tolist()\n", globals={"seed": 11}),
]

MESSAGES = [
    Case("numpy_reprs_in_feedback", "import numpy as np\nx = np.float64(2.33)\nflag = np.bool_(True)\n"
         "as_list = repr([x, flag])\nas_dict = str({'answer': x, 'ok': flag})\npercent = 'got %r' % (x,)\n"
         "debug = f'{x=}'\nshape = repr(np.array([1.5, 2.0]))\nint_repr = repr(np.int64(7))\n",
         expect={"as_list": "[2.33, True]", "percent": "got 2.33", "debug": "x=2.33"}),
    Case("scipy_results_in_feedback", "from scipy import optimize, stats\n"
         "fit = stats.linregress([1, 2, 3, 4], [2.1, 3.9, 6.2, 7.8])\nfit_text = repr(fit)\n"
         "ttest = str(stats.ttest_ind([1, 2, 3, 4], [2, 3, 4, 5.5]))\n"
         "result = optimize.minimize_scalar(lambda v: (v - 2) ** 2)\n"
         "result_text = f'x={result.x!r} fun={result.fun!r}'\n"
         "message = str(result.message)\nroots = repr(optimize.fsolve(lambda v: v ** 2 - 4, [1.0]))\n",
         course=HEAVY_COURSE),
    Case("grader_compares_a_message", "import numpy as np\nexpected = [1.5, 2.5]\n"
         "given = np.array([1.5, 2.5])\nok = str(list(given)) == str(expected)\n"
         "feedback = 'You entered ' + str(list(given))\n",
         expect={"ok": True, "feedback": "You entered [1.5, 2.5]"}),
    Case("error_message_with_numpy_values", "import numpy as np\nv = np.float64(0.5)\n"
         "assert v > 1, f'too small: {v!r} in {[v]}'\n", status="safe_error"),
    Case("numpy1_removed_name_in_a_grader", "import numpy as np\nresult = np.float_\nmissing = np.no_such_thing\n",
         status="safe_error"),
]

SEEDED = [
    Case("random_as_the_prolog_seeds_it", "values = [random.randint(1, 6) for _ in range(5)]\n"
         "deck = list(range(10))\nrandom.shuffle(deck)\npick = random.choice(['a', 'b', 'c'])\n"
         "gauss = round(random.gauss(0, 1), 12)\nown = random.Random(3).random()\n", seed=42),
    Case("random_module_imported_again", "import random as r\nsame = r is random\nvalue = r.random()\n"
         "kind = type(r).__module__ + '.' + type(r).__name__\n", seed=9,
         expect={"same": True, "kind": "random2.Random"}),
    Case("networkx_seeded_from_the_prolog", "import networkx as nx\n"
         "G = nx.gnp_random_graph(8, 0.4, seed=random.randint(0, 1000))\nedges = sorted(G.edges())\n"
         "H = nx.gnp_random_graph(8, 0.4, seed=random.Random(5))\nmore = sorted(H.edges())\n"
         "path = nx.shortest_path(nx.path_graph(5), 0, 4)\n", seed=17),
    Case("networkx_unseeded_in_the_lms", "import networkx as nx\nG = nx.gnp_random_graph(6, 0.5)\n",
         status="safe_error"),
    Case("networkx_seeded_with_the_prolog_random", "import networkx as nx\n"
         "G = nx.gnp_random_graph(6, 0.5, seed=random)\n", status="safe_error"),
    Case("sympy_random", "import sympy\nfrom sympy.core import random as sympy_random\n"
         "matrix = sympy.randMatrix(2, 2, min=0, max=9, seed=5).tolist()\n"
         "kind = type(sympy_random.rng).__module__\nvalue = sympy_random.randint(1, 10) in range(1, 11)\n",
         seed=3, expect={"kind": "random2", "value": True}),
    # random2's seed() takes no version=: sympy's own seeding fails in the LMS.
    Case("sympy_seed_in_the_lms", "from sympy.core import random as sympy_random\nsympy_random.seed(4)\n",
         status="safe_error"),
    # Not UniformProbDist: it draws from a set, whose order of strings is the interpreter's hash seed's.
    Case("nltk_random", "from nltk.probability import DictionaryProbDist\n"
         "dist = DictionaryProbDist({'a': 0.5, 'b': 0.25, 'c': 0.25})\nsamples = [dist.generate() for _ in range(6)]\n",
         seed=8,
         course=HEAVY_COURSE),
    Case("library_randomness", "from loncapa import lc_random\nvalues = [lc_random(1, 10, 1) for _ in range(4)]\n"
         "import secrets\nsecret_kind = type(secrets.SystemRandom()).__module__\n", seed=21),
    Case("tempfile_after_the_prolog", "import tempfile\nhandle, path = tempfile.mkstemp()\n", status="safe_error"),
]

LIBRARIES = [
    Case("sympy_printing", "import sympy\nx, y = sympy.symbols('x y')\n"
         "expr = sympy.Integral(sympy.sqrt(x) / (1 + x ** 2), x)\n"
         "text = str(sympy.simplify((x ** 2 - 1) / (x - 1)))\nlatex = sympy.latex(expr)\n"
         "solved = str(sympy.solve(x ** 2 - 2, x))\nseries = str(sympy.series(sympy.exp(x), x, 0, 4))\n"
         "pretty = sympy.pretty(sympy.Matrix([[x, 1], [0, y]]), use_unicode=True)\n"
         "rational = str(sympy.Rational(3, 6) + sympy.sqrt(8))\n"),
    Case("symmath_check", "from symmath import symmath_check_simple\n"
         "verdict = symmath_check_simple('x^2+2*x+1', '(x+1)^2')\n"
         "numeric = symmath_check_simple('sqrt(2)', '1.41421356')\n", course=HEAVY_COURSE),
    Case("calc_evaluator", "values = [calc.evaluator({'x': 2.5}, {}, 'x^2 + sin(pi/2)'),\n"
         "          calc.evaluator({'R1': 4, 'R2': 4}, {}, 'R1 || R2'), calc.evaluator({}, {}, '2*10^3')]\n",
         expect={"values": [7.25, 2.0, 2000.0]}),
    Case("calc_error", "v = calc.evaluator({}, {}, 'y + 1')\n", status="safe_error"),
    Case("chemcalc_grading", "same = chemcalc.compare_chemical_expression('2H2O', '2 H2O')\n"
         "html = chemcalc.render_to_html('H2SO4 -> H^+ + HSO4^-')\n"
         "ratio = str(chemcalc.divide_chemical_expression('4H2O', '2H2O'))\n", course=HEAVY_COURSE),
    Case("codejail_includes", "from loncapa import lc_choose\nchosen = lc_choose(2, 'a', 'b', 'c')\n"
         "standard = eia.iseia(4.7)\nok = draganddrop.grade('[{\"1\": \"t1\"}]', {'1': 't1'})\n",
         expect={"chosen": "b", "ok": True}),
    Case("lxml_html_clean", "from lxml.html.clean import Cleaner, clean_html\n"
         "safe = clean_html('<p>Hi<script>alert(1)</script><b onclick=\"x()\">there</b></p>')\n"
         "kept = Cleaner(scripts=True, javascript=True, style=True).clean_html('<div><style>p{}</style>ok</div>')\n"
         "import lxml.etree\nroot = lxml.etree.fromstring('<a><b>1</b></a>')\ntext = root.findtext('b')\n",
         expect=lambda g: "script" not in g["safe"] and g["text"] == "1"),
    Case("nltk_text", "import nltk\ntokens = nltk.tokenize.wordpunct_tokenize('Hello, world! It is 3.5 degrees.')\n"
         "distance = nltk.edit_distance('kitten', 'sitting')\n"
         "stem = nltk.stem.PorterStemmer().stem('running')\n", course=HEAVY_COURSE,
         expect={"distance": 3, "stem": "run"}),
    Case("matplotlib_figure", "import io, hashlib\nimport matplotlib\nimport matplotlib.pyplot as plt\n"
         "fig, ax = plt.subplots(figsize=(2, 2), dpi=50)\nax.plot([0, 1, 2], [0, 1, 4])\nax.axis('off')\n"
         "buf = io.BytesIO()\nfig.savefig(buf, format='png')\ndigest = hashlib.sha256(buf.getvalue()).hexdigest()\n"
         "backend = matplotlib.get_backend()\nconfig_in_tmp = matplotlib.get_configdir().endswith('/tmp')\n"
         "ticks = [t.get_text() for t in ax.get_xticklabels()]\n",
         course=HEAVY_COURSE, expect={"config_in_tmp": True}),
    Case("sandbox_versions", "import sys\nfrom importlib import metadata\n"
         "versions = {name: metadata.version(name) for name in ('numpy', 'scipy', 'sympy', 'matplotlib', "
         "'networkx', 'nltk', 'lxml', 'lxml-html-clean', 'chem', 'openedx-calc', 'codejail-includes', 'random2')}\n"
         "python = '%d.%d' % sys.version_info[:2]\n",
         expect=lambda g: g["versions"]["numpy"].startswith("1.")),
]

PARITY = NUMPY1_IDIOMS + MESSAGES + SEEDED + LIBRARIES
