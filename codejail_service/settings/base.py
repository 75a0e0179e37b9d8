"""
Defaults shared by every environment.

The service keeps no state: no database (Django still wants one, so an in-memory
SQLite is configured and never used), no sessions, no users, no secrets.
"""

import os

MIB = 1024 * 1024

# Nothing is signed (no sessions, no CSRF cookies, no passwords), so the key
# protects nothing; Django merely refuses to start without one.
SECRET_KEY = "codejail-service-has-no-secrets"

DEBUG = False

# The service is internal: the LMS/CMS reach it by whatever name the deployment
# gives it. Restrict in the YAML config if your network can route other names here.
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "rest_framework",
    "drf_spectacular",
    "codejail_service.apps.core",
]

MIDDLEWARE = [
    # First, so an oversize body is refused before anything reads it.
    "codejail_service.apps.core.middleware.RequestSizeLimitMiddleware",
]

ROOT_URLCONF = "codejail_service.urls"
WSGI_APPLICATION = "codejail_service.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
    }
}

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False

REST_FRAMEWORK = {
    # Unauthenticated internal service: no auth classes, so DRF needs neither
    # django.contrib.auth nor sessions.
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
    # Every answer is JSON, whatever the client's Accept header says.
    # Strict JSON with non-finite floats as null: the LMS's parser (requests + simplejson) refuses
    # bare NaN / Infinity. Requests may carry them (Python's JSON).
    "DEFAULT_RENDERER_CLASSES": ["codejail_service.apps.core.renderers.StrictJSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "codejail_service.apps.core.negotiation.AlwaysJSONNegotiation",
    "STRICT_JSON": True,
    # Escape non-ASCII as \uXXXX: plain ASCII bodies, and lone surrogates that
    # codejail lets through cannot break UTF-8 encoding of the response.
    "UNICODE_JSON": False,
    # Errors as {"error": "..."} like the rest of the API.
    "EXCEPTION_HANDLER": "codejail_service.apps.core.errors.json_exception_handler",
    # The OpenAPI schema (GET /api/schema/; checked in as docs/openapi.yaml).
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "codejail-service",
    "DESCRIPTION": "Runs Open edX course Python code (custom-response problems) in codejail's sandbox "
    "for the LMS/CMS. Internal service: no authentication.",
    "VERSION": "0",
    # The schema view documents itself only through the checked-in file.
    "SERVE_INCLUDE_SCHEMA": False,
}

# Telemetry backends for edx_django_utils.monitoring (set_custom_attribute, record_exception).
# None by default: name the one your deployment runs in the YAML config, e.g.
# ["edx_django_utils.monitoring.OpenTelemetryBackend"] (its package must be installed).
OPENEDX_TELEMETRY = []

# .. setting_name: CODEJAIL_MAX_REQUEST_BYTES
# .. setting_default: 10 MiB
# .. setting_description: Largest request body accepted. Checked against Content-Length before
#   the body is read (413 JSON otherwise). The LMS sends the payload plus one python_lib.zip of
#   course-provided modules, normally far below this.
CODEJAIL_MAX_REQUEST_BYTES = 10 * MIB

# Limits Django applies while parsing; kept in step with CODEJAIL_MAX_REQUEST_BYTES by
# apply_request_size_limit(). Uploads stay in memory (never spooled to disk).
DATA_UPLOAD_MAX_MEMORY_SIZE = CODEJAIL_MAX_REQUEST_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = CODEJAIL_MAX_REQUEST_BYTES
# payload + python_lib.zip: a handful of fields is all the LMS sends.
DATA_UPLOAD_MAX_NUMBER_FIELDS = 20
DATA_UPLOAD_MAX_NUMBER_FILES = 5


def apply_request_size_limit(settings_dict):
    """Derive Django's parse limits from CODEJAIL_MAX_REQUEST_BYTES (call after overriding it)."""
    limit = settings_dict["CODEJAIL_MAX_REQUEST_BYTES"]
    settings_dict["DATA_UPLOAD_MAX_MEMORY_SIZE"] = limit
    settings_dict["FILE_UPLOAD_MAX_MEMORY_SIZE"] = limit


# Master switch for execution; the SettingToggle (with its annotation) is in
# codejail_service/apps/core/toggles.py. Operators turn it on after /health/ passes.
CODEJAIL_ENABLED = False

# Handed to codejail by apply_django_settings() when the core app is ready.
CODE_JAIL = {
    # A `python -m venv --copies` venv, root-owned, made by deploy/provision.sh.
    "python_bin": "/opt/codejail-service/sandbox-venv/bin/python",
    # The sandbox user the app user may sudo to (deploy/provision.sh, sudoers).
    "user": "codejail-sandbox",
    "limits": {
        # CPU seconds. The LMS gives up after 3.5 s of wall time anyway.
        "CPU": 1,
        # Wall-clock seconds. Must stay under the LMS read timeout (3.5 s); the cold-cache
        # slowness operators met with 3 s is absorbed by the startup checks, which run the
        # sandbox python before the first request. A run killed at 3 s is answered at 3.03-3.08 s,
        # one at a time and with every slot busy (make bench-timeout): about 0.42 s to spare.
        # Raise the LMS's CODE_JAIL_REST_SERVICE_READ_TIMEOUT with it, or students get "service
        # unavailable" instead of the time-limit message.
        "REALTIME": 3,
        # Address space. matplotlib needs about 300-512 MB; well under 1 GiB so that a huge
        # allocation ends in MemoryError instead of SIGXCPU from page-zeroing time.
        "VMEM": 512 * MIB,
        # Largest file the code may write (in its own tmp/).
        "FSIZE": 1 * MIB,
        # Processes + threads of the sandbox UID host-wide; numpy's OpenBLAS wants >= 4
        # threads unless OPENBLAS_NUM_THREADS is lowered (the LMS prolog sets it to 1).
        "NPROC": 15,
        # No proxy process (it is not thread-safe and we gain nothing from it).
        "PROXY": 0,
    },
    # {limit_overrides_context: {limit name: value}}, e.g. a course that needs more time.
    "limit_overrides": {},
}

# .. setting_name: CODEJAIL_MAX_EMSG_CHARS
# .. setting_default: 64 Ki characters
# .. setting_description: Longest emsg answered for a failed run. codejail's message holds all the
#   sandbox's stdout and stderr; longer messages keep their first and last halves, with a note of
#   how much was left out between them (the tail keeps the traceback's end and the exit status).
CODEJAIL_MAX_EMSG_CHARS = 64 * 1024

# .. setting_name: CODEJAIL_MAX_OUTPUT_BYTES
# .. setting_default: 1 MiB
# .. setting_description: How much output of one run is kept beyond what its globals need. stdout
#   (which carries the globals back) may be as long as the run's input (codejail's JSON of the code
#   and the request's globals) plus this, so any globals a request brought come back whole; past
#   that the service stops reading, the run fails, and its emsg says stdout was truncated. stderr
#   keeps its first and last halves of this, with a note of how much was left out between them
#   (the traceback comes last); it is read to its end unless it exceeds 64 times this, a flood whose
#   pipe is then closed. A flood can then grow a worker by at most the request's own size plus
#   twice this.
CODEJAIL_MAX_OUTPUT_BYTES = 1 * MIB

# .. setting_name: CODEJAIL_ADMISSION
# .. setting_default: {"max_waiting": 8, "deadline_seconds": 3.5, "retry_after_seconds": 1}
# .. setting_description: Overload behaviour. A run needs a free slot of the sandbox user pool
#   (CODEJAIL_SANDBOX_POOL_SIZE; without a pool, its worker's one turn). A request finding none
#   waits, with at most ``max_waiting`` others in its worker, as long as its answer can still
#   reach the caller within ``deadline_seconds`` (the LMS's read timeout, 3.5 s): that less the
#   time it has spent and the 90th percentile of its worker's recent runs' times
#   (codejail_service/apps/core/admission.py). Beyond that it is answered at once with 503 and
#   ``Retry-After: retry_after_seconds`` rather than left to time out in the LMS. Each worker
#   needs more gunicorn threads than ``max_waiting`` + 1 (CODEJAIL_SERVICE_THREADS).
CODEJAIL_ADMISSION = {"max_waiting": 8, "deadline_seconds": 3.5, "retry_after_seconds": 1}

# .. setting_name: CODEJAIL_SANDBOX_POOL_SIZE
# .. setting_default: 4
# .. setting_description: Number of sandbox users in the pool, and so of concurrent runs. When
#   N > 0, the users are ``<CODE_JAIL["user"]>-0`` .. ``-<N-1>`` (deploy/provision.sh makes them and
#   their sudoers rules, 4 unless told otherwise); each run holds one of them (a slot), whichever
#   gunicorn worker serves it, so runs do not share RLIMIT_NPROC (counted per UID, host-wide) and
#   cannot see each other's processes. When 0, every run is as ``CODE_JAIL["user"]``, one at a time
#   per worker, and always a fresh interpreter. The startup checks run for every user.
CODEJAIL_SANDBOX_POOL_SIZE = 4

# .. setting_name: CODEJAIL_SLOT_DIR
# .. setting_default: None
# .. setting_description: Directory of the sandbox slots' lock files (sandbox/pool.py),
#   private to the app user (mode 0700; made if missing). Every worker and every service on the
#   host that shares it shares the pool without two runs as one user at once. None:
#   ``<temp dir>/codejail_service-slots.<app uid>`` (not named like a run directory).
CODEJAIL_SLOT_DIR = None

# .. setting_name: CODEJAIL_ALLOW_UNBOUNDED_RUN_MEMORY
# .. setting_default: False
# .. setting_description: Let execution start although nothing bounds a run's total memory across
#   its processes. The confinement layer's reaper bounds it (``run_memory_factor`` x VMEM, 2 by
#   default, in /etc/codejail-service/confinement.json; docs/decisions/0008-default-deny-sandbox.rst);
#   where the layer is off (AppArmor-only hosts) or its bound is switched off, each process is
#   bounded by VMEM alone, and NPROC x VMEM is the run's real bound: the ``confinement_layers``
#   startup check fails unless this is True.
CODEJAIL_ALLOW_UNBOUNDED_RUN_MEMORY = False

# .. setting_name: CODEJAIL_WARM_SANDBOX
# .. setting_default: True
# .. setting_description: Run code in children forked by a pre-imported sandbox interpreter per
#   pool slot (a zygote, codejail_service/confinement/zygote.py: numpy, scipy, sympy, matplotlib,
#   calc, chem, networkx, lxml already imported) instead of a fresh interpreter per run: about a
#   third of the CPU per trivial run, and course code that imports those starts at once
#   (docs/decisions/0007-warm-sandbox.rst). Needs the sandbox user pool (on by default:
#   CODEJAIL_SANDBOX_POOL_SIZE > 0); with the pool set to 0, or CODEJAIL_ZYGOTE_SCRIPT to None,
#   every run is a fresh interpreter. False: a fresh interpreter per run (the opt-out; slower,
#   nothing shared between runs).
CODEJAIL_WARM_SANDBOX = True

# .. setting_name: CODEJAIL_ZYGOTE_MAX_RUNS
# .. setting_default: 1000
# .. setting_description: With CODEJAIL_WARM_SANDBOX, a slot's zygote is replaced after this many
#   runs (0: never), so that its address-space layout and string-hash seed are shared by a
#   bounded number of runs. The successor is started in the background and preloads while the
#   zygote keeps serving (about 2.5 s of CPU per replacement); if none comes, the zygote stops
#   taking runs at ten times this (or twice CODEJAIL_ZYGOTE_MAX_SECONDS).
CODEJAIL_ZYGOTE_MAX_RUNS = 1000

# .. setting_name: CODEJAIL_ZYGOTE_MAX_SECONDS
# .. setting_default: 600
# .. setting_description: With CODEJAIL_WARM_SANDBOX, a slot's zygote is replaced once it is this
#   many seconds old (0: never), as for CODEJAIL_ZYGOTE_MAX_RUNS (whichever comes first).
CODEJAIL_ZYGOTE_MAX_SECONDS = 600

# .. setting_name: CODEJAIL_ZYGOTE_PYTHON
# .. setting_default: "/opt/codejail-service/sandbox-venv/bin/python-zygote"
# .. setting_description: The sandbox python that starts the zygotes, exactly as the sudoers rule
#   names it. deploy/provision.sh makes ``<sandbox venv>/bin/python-zygote``, a hard link to the
#   venv's python, so that AppArmor can give the zygote a profile of its own (apparmor/: exec rules
#   tell programs apart by path). None: ``CODE_JAIL["python_bin"]``.
CODEJAIL_ZYGOTE_PYTHON = "/opt/codejail-service/sandbox-venv/bin/python-zygote"

# .. setting_name: CODEJAIL_ZYGOTE_SCRIPT
# .. setting_default: "/opt/codejail-service/sandbox-venv/lib/python3.11/site-packages/codejail_confinement/zygote.py"
# .. setting_description: Path of the zygote script in the sandbox virtualenv, exactly as the
#   sudoers rule names it (deploy/provision.sh writes both; this default is its layout, as
#   CODE_JAIL's is). None: no zygotes, a fresh interpreter per run.
CODEJAIL_ZYGOTE_SCRIPT = (
    "/opt/codejail-service/sandbox-venv/lib/python3.11/site-packages/codejail_confinement/zygote.py"
)

# .. setting_name: CODEJAIL_RUN_DIR_ROOT
# .. setting_default: None
# .. setting_description: With a sandbox user pool, where the slots' run directories go: slot i
#   makes its runs' directories in ``<root>/<i>``, each its own size-limited filesystem (a tmpfs
#   that deploy/provision.sh mounts with CODEJAIL_RUN_DIR_SIZE, or a Kubernetes emptyDir with
#   medium Memory and a sizeLimit), which caps the total one run may write (RLIMIT_FSIZE caps a
#   single file only). The confinement layer's ``run_dir_parent`` must list the same
#   directories. The ``run_dir_cap`` startup check proves each is a filesystem of its own of at
#   most CODEJAIL_RUN_DIR_MAX_BYTES. None: run directories in the temp directory, uncapped.
CODEJAIL_RUN_DIR_ROOT = None

# .. setting_name: CODEJAIL_RUN_DIR_MAX_BYTES
# .. setting_default: 64 MiB
# .. setting_description: Largest size the ``run_dir_cap`` startup check accepts for each slot's
#   run directory filesystem (see CODEJAIL_RUN_DIR_ROOT).
CODEJAIL_RUN_DIR_MAX_BYTES = 64 * MIB

# .. setting_name: CODEJAIL_EGRESS_CHECK
# .. setting_default: {"host": "127.0.0.1", "port": 9, "timeout": 1.0}
# .. setting_description: Target of the `webapp_egress` startup check: a TCP connect from the
#   web app itself, which passes only when the connect is blocked (timeout, unreachable, EPERM).
#   An IP literal, so the check never depends on DNS. Production defaults to a public address
#   (see production.py); loopback here, because development and tests must never send traffic
#   off this machine (loopback is never firewalled, so the check honestly fails).
CODEJAIL_EGRESS_CHECK = {"host": "127.0.0.1", "port": 9, "timeout": 1.0}

# .. setting_name: CODEJAIL_ENFORCE_STARTUP_CHECKS
# .. setting_default: True
# .. setting_description: When False, code is executed even if the startup safety checks failed
#   (/health/ still answers 503, and each request logs a loud warning). Only for CI runs that
#   deliberately sabotage the sandbox to prove the live tests catch it. NEVER in production.
CODEJAIL_ENFORCE_STARTUP_CHECKS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # One record, one line, whatever a caller sent (log_format.py).
        "standard": {"()": "codejail_service.log_format.SafeFormatter",
                     "format": "%(asctime)s %(levelname)s %(process)d [%(name)s] %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "standard"},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("CODEJAIL_SERVICE_LOG_LEVEL", "INFO")},
}
