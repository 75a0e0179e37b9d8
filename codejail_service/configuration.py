"""
Every operator-facing name of the service, declared once: the configuration table.

Each ``Name`` is one concept with one default. ``readers`` says who reads it (the Django
settings, gunicorn's process environment, deploy/provision.sh's environment, the confinement
layer's confinement.json, the Dockerfile's build arguments, the Tutor plugin's settings), and
``aliases`` the name it has in a place that names it differently. This module is data only (no
Django, nothing of the app): the operator reference page renders it (docs/_ext/
operator_reference.py), and codejail_service/tests/test_configuration.py checks every place
that repeats a default against it (settings/base.py, gunicorn_config.py, provision.sh, the
Dockerfile, the Tutor plugin, the Kubernetes config, the confinement layer's defaults).

To add a name: add a row below (keep the section order); the test then says which place
disagrees with it.
"""

from dataclasses import dataclass, field

MIB = 1024 * 1024

# Who reads a name.
DJANGO = "Django setting"  # settings/base.py; the YAML file (CODEJAIL_SERVICE_CFG) overrides it
PROCESS_ENV = "process environment"  # gunicorn_config.py, settings, at the service's start
PROVISION = "provision.sh"  # deploy/provision.sh's environment
CONFINEMENT_JSON = "confinement.json"  # /etc/codejail-service/confinement.json, the layer's
DOCKERFILE = "Dockerfile ARG"  # docker build --build-arg
TUTOR = "Tutor setting"  # tutor config save --set CODEJAIL_SERVICE_<alias>=...


@dataclass(frozen=True)
class Name:
    """One operator-facing name: its type, its one default (None: unset) and unit, and who reads it."""

    name: str
    type: str
    default: object
    readers: tuple
    description: str
    unit: str = ""
    aliases: dict = field(default_factory=dict)  # {reader: the name it reads}
    # {reader: value}: a place that sets another value on purpose (the description says why).
    overrides: dict = field(default_factory=dict)

    def name_for(self, reader):
        """The name ``reader`` reads this by."""
        return self.aliases.get(reader, self.name)

    def value_for(self, reader):
        """The value ``reader`` starts from: the default, unless it is one of the declared overrides."""
        return self.overrides.get(reader, self.default)


# The sandbox venv's layout (provision.sh makes it; CODE_JAIL and the zygote settings name it).
PREFIX = "/opt/codejail-service"
SANDBOX_PYTHON = f"{PREFIX}/sandbox-venv/bin/python"
ZYGOTE_SCRIPT = f"{PREFIX}/sandbox-venv/lib/python3.11/site-packages/codejail_confinement/zygote.py"

LIMITS = {"CPU": 1, "REALTIME": 3, "VMEM": 512 * MIB, "FSIZE": 1 * MIB, "NPROC": 15, "PROXY": 0}

TABLE = (
    # --- What runs, and how much ------------------------------------------------------------
    Name("CODEJAIL_ENABLED", "bool", False, (DJANGO, TUTOR),
         "Master switch for execution (a toggle): turn it on once /health/ answers 200. Tutor, and the "
         "config.yml provision.sh writes, switch it on: execution still waits for the startup checks.",
         aliases={TUTOR: "ENABLED"}, overrides={TUTOR: True}),
    Name("CODE_JAIL", "dict", {"python_bin": SANDBOX_PYTHON, "user": "codejail-sandbox", "limits": LIMITS,
                               "limit_overrides": {}}, (DJANGO,),
         "codejail's configuration: the sandbox python, its base user, the limits per run and per "
         "limit_overrides_context (docs/deployment.rst). Give it whole in the YAML file."),
    Name("CODEJAIL_LIMITS", "dict", LIMITS, (TUTOR,),
         "CODE_JAIL['limits'] as the Tutor plugin writes it: CPU and REALTIME in s, VMEM and FSIZE in "
         "bytes, NPROC tasks per sandbox UID.", aliases={TUTOR: "LIMITS"}),
    Name("CODEJAIL_LIMIT_OVERRIDES", "dict", {}, (TUTOR,),
         "CODE_JAIL['limit_overrides'] as the Tutor plugin writes it.", aliases={TUTOR: "LIMIT_OVERRIDES"}),
    Name("CODEJAIL_MAX_REQUEST_BYTES", "int", 10 * MIB, (DJANGO,),
         "Largest request body accepted (Django's parse limits follow it).", unit="bytes"),
    Name("CODEJAIL_MAX_EMSG_CHARS", "int", 64 * 1024, (DJANGO,),
         "Longest emsg answered for a failed run (head and tail kept).", unit="characters"),
    Name("CODEJAIL_MAX_OUTPUT_BYTES", "int", 1 * MIB, (DJANGO,),
         "Output of one run kept beyond what its globals need.", unit="bytes"),
    Name("CODEJAIL_ADMISSION", "dict", {"max_waiting": 8, "deadline_seconds": 3.5, "retry_after_seconds": 1},
         (DJANGO,), "Overload behaviour: how many may wait for a slot, the caller's deadline that bounds the wait, "
         "and the 503's Retry-After."),
    # --- The sandbox user pool ----------------------------------------------------------------
    Name("CODEJAIL_SANDBOX_POOL_SIZE", "int", 4, (DJANGO, PROVISION, DOCKERFILE, TUTOR),
         "Sandbox users in the pool, and so runs at once; provision.sh makes them, the service uses them. "
         "0: no pool, every run as CODE_JAIL['user'], one at a time per worker.", unit="users",
         aliases={DOCKERFILE: "SANDBOX_POOL_SIZE", TUTOR: "SANDBOX_POOL_SIZE"}),
    Name("CODEJAIL_SLOT_DIR", "path", None, (DJANGO,),
         "Directory of the slots' lock files and zygote sockets, private to the app user. "
         "None: <temp dir>/codejail_service-slots.<app uid>."),
    Name("CODEJAIL_RUN_DIR_ROOT", "path", None, (DJANGO, PROVISION),
         "Where slot i's run directories go: <root>/<i>, a size-limited filesystem each. None: the temp "
         "directory, uncapped. provision.sh mounts its slots' tmpfs under /var/lib/codejail-service/runs "
         "and writes that to the config, when CODEJAIL_RUN_DIR_MIB is not 0.",
         overrides={PROVISION: "/var/lib/codejail-service/runs"}),
    Name("CODEJAIL_RUN_DIR_MIB", "int", 64, (PROVISION, DOCKERFILE, TUTOR),
         "Size of each slot's tmpfs for its runs; 0: none (runs write to /tmp). provision.sh writes "
         "CODEJAIL_RUN_DIR_MAX_BYTES from it.", unit="MiB",
         aliases={DOCKERFILE: "RUN_DIR_MIB", TUTOR: "RUN_DIR_MIB"}),
    Name("CODEJAIL_RUN_DIR_MAX_BYTES", "int", 64 * MIB, (DJANGO,),
         "Largest run-directory filesystem per slot the run_dir_cap startup check accepts.", unit="bytes"),
    Name("CODEJAIL_RUN_DIR_MOUNT", "str", "host", (PROVISION,),
         "'host': provision.sh mounts the slots' tmpfs; 'runtime': the container runtime does."),
    # --- The warm sandbox (ADR 7) -------------------------------------------------------------
    Name("CODEJAIL_WARM_SANDBOX", "bool", True, (DJANGO, PROVISION, TUTOR),
         "Runs forked by a pre-imported zygote per pool slot; false: a fresh interpreter per run. "
         "Needs a pool (CODEJAIL_SANDBOX_POOL_SIZE > 0).", aliases={TUTOR: "WARM_SANDBOX"}),
    Name("CODEJAIL_ZYGOTE_MAX_RUNS", "int", 1000, (DJANGO,),
         "A slot's zygote is replaced after this many runs (0: never).", unit="runs"),
    Name("CODEJAIL_ZYGOTE_MAX_SECONDS", "int", 600, (DJANGO,),
         "A slot's zygote is replaced once this old (0: never).", unit="s"),
    Name("CODEJAIL_ZYGOTE_PYTHON", "path", f"{SANDBOX_PYTHON}-zygote", (DJANGO,),
         "The python that starts the zygotes, as the sudoers rule names it. None: CODE_JAIL['python_bin']."),
    Name("CODEJAIL_ZYGOTE_SCRIPT", "path", ZYGOTE_SCRIPT, (DJANGO,),
         "The zygote script in the sandbox venv, as the sudoers rule names it. None: no zygotes."),
    # --- Confinement (ADR 4, 8) -----------------------------------------------------------------
    Name("CODEJAIL_CONFINEMENT", "str", "enforce", (PROVISION, CONFINEMENT_JSON),
         "'enforce': our Landlock + seccomp layer confines every run or refuses it; 'off': AppArmor-only "
         "hosts and the sabotage run.", aliases={CONFINEMENT_JSON: "mode"}),
    Name("CODEJAIL_ALLOW_DEGRADED", "bool", False, (PROVISION, CONFINEMENT_JSON),
         "Run where the kernel lacks part of the policy, reporting the layer as degraded.",
         aliases={CONFINEMENT_JSON: "allow_degraded"}),
    Name("CODEJAIL_RUN_MEMORY_FACTOR", "float", 2, (PROVISION, CONFINEMENT_JSON),
         "A run's processes together may hold at most this many times its VMEM (0: no bound).",
         unit="x VMEM", aliases={CONFINEMENT_JSON: "run_memory_factor"}),
    Name("CODEJAIL_RUN_CPU_FACTOR", "float", 3, (PROVISION, CONFINEMENT_JSON),
         "A run's processes together may use at most this many times its CPU limit (RLIMIT_CPU, per "
         "process) of CPU time: 3 x 1 s is about REALTIME on one core (ADR 9; 0: no bound).",
         unit="x CPU", aliases={CONFINEMENT_JSON: "run_cpu_factor"}),
    Name("CODEJAIL_RUN_OPEN_FILES", "int", 64, (CONFINEMENT_JSON,),
         "RLIMIT_NOFILE of every process of a run: with socket and pipe buffers at their default size, "
         "it bounds the kernel memory a run can hold in buffers (ADR 9).", unit="descriptors",
         aliases={CONFINEMENT_JSON: "run_open_files"}),
    Name("CODEJAIL_RUN_MEMORY_BYTES", "int", None, (CONFINEMENT_JSON,),
         "A run's memory bound in bytes, instead of the factor.", unit="bytes",
         aliases={CONFINEMENT_JSON: "run_memory_bytes"}),
    Name("CODEJAIL_RUN_DIR_PARENT", "list", "/tmp", (CONFINEMENT_JSON,),
         "Where run directories may be (one per slot); provision.sh writes it from CODEJAIL_RUN_DIR_ROOT.",
         aliases={CONFINEMENT_JSON: "run_dir_parent"}),
    Name("CODEJAIL_ALLOW_UNBOUNDED_RUN_MEMORY", "bool", False, (DJANGO,),
         "Let execution start although nothing bounds a run's total memory across its processes."),
    Name("CODEJAIL_ENFORCE_STARTUP_CHECKS", "bool", True, (DJANGO,),
         "False: execute even if the startup checks failed (the sabotage run only; never in production)."),
    Name("CODEJAIL_EGRESS_CHECK", "dict", {"host": "127.0.0.1", "port": 9, "timeout": 1.0}, (DJANGO,),
         "Target of the webapp_egress startup check, which must fail to connect (production: 1.1.1.1:443)."),
    Name("CODEJAIL_EGRESS_CHECK_TARGET", "str", "", (PROVISION, TUTOR),
         "host:port written as CODEJAIL_EGRESS_CHECK; empty: the settings' default.",
         aliases={TUTOR: "EGRESS_CHECK_TARGET"}),
    Name("CODEJAIL_BLOCK_APP_EGRESS", "bool", False, (PROVISION,),
         "1: nftables drops all the app user sends but to loopback (plain hosts)."),
    # --- Users and the venvs (provisioning) ---------------------------------------------------
    Name("CODEJAIL_PREFIX", "path", PREFIX, (PROVISION,), "Where the venvs live."),
    Name("CODEJAIL_APP_USER", "str", "codejail-app", (PROVISION,), "The user gunicorn runs as."),
    Name("CODEJAIL_APP_UID", "int", 180001, (PROVISION, DOCKERFILE, TUTOR), "The app user's UID.",
         aliases={DOCKERFILE: "APP_UID", TUTOR: "APP_UID"}),
    Name("CODEJAIL_SANDBOX_USER", "str", "codejail-sandbox", (PROVISION,),
         "The base sandbox user (CODE_JAIL['user']); the pool's are <user>-<i>."),
    Name("CODEJAIL_SANDBOX_UID", "int", 180100, (PROVISION, DOCKERFILE, TUTOR),
         "The base sandbox user's UID; pool user i has UID + 1 + i.",
         aliases={DOCKERFILE: "SANDBOX_UID", TUTOR: "SANDBOX_UID"}),
    Name("CODEJAIL_PIP_OPTIONS", "str", "", (PROVISION, DOCKERFILE, TUTOR),
         "Extra pip options (a mirror, a wheelhouse).", aliases={TUTOR: "BUILD_PIP_OPTIONS"}),
    Name("CODEJAIL_SANDBOX_PYTHON", "path", "/usr/bin/python3.11", (PROVISION, DOCKERFILE, TUTOR),
         "The Python the sandbox venv is made with (installed already; Debian 12 has 3.11 only). It "
         "chooses which package sets can run (requirements/sandbox/sets.txt).",
         aliases={TUTOR: "SANDBOX_PYTHON"}),
    Name("CODEJAIL_SANDBOX_REQUIREMENTS", "str", "", (PROVISION, DOCKERFILE, TUTOR),
         "The sandbox's packages: a set's name from requirements/sandbox/sets.txt (the Open edX "
         "platform's: current on 3.12, current-py311 and teak on 3.11), or the operator's own pins file. "
         "Empty: the newest set for CODEJAIL_SANDBOX_PYTHON.", aliases={TUTOR: "SANDBOX_REQUIREMENTS"}),
    Name("CODEJAIL_EXTRA_PIP_REQUIREMENTS", "list", "", (PROVISION, DOCKERFILE, TUTOR),
         "More packages for the sandbox venv (pip requirement specifiers, space-separated).",
         aliases={TUTOR: "EXTRA_PIP_REQUIREMENTS"}),
    Name("CODEJAIL_SKIP_APT", "bool", False, (PROVISION,), "1: the system packages are known to be there."),
    Name("BASE_IMAGE", "str", "debian:bookworm-20250520-slim", (DOCKERFILE, TUTOR),
         "The Debian 12 image the service's image is built on (Tutor names its registry).",
         overrides={TUTOR: "docker.io/debian:bookworm-20250520-slim"}),
    # --- The server process -------------------------------------------------------------------
    Name("CODEJAIL_SERVICE_BIND", "str", "127.0.0.1:8550", (PROCESS_ENV,), "Address gunicorn listens on."),
    Name("CODEJAIL_SERVICE_WORKERS", "int", None, (PROCESS_ENV, TUTOR),
         "gunicorn worker processes. Unset: 2 x CPU cores (Tutor sets 4: a pod's cores are not known "
         "when its config is written).", unit="processes", aliases={TUTOR: "WORKERS"}, overrides={TUTOR: 4}),
    Name("CODEJAIL_SERVICE_THREADS", "int", 16, (PROCESS_ENV,),
         "Threads per worker; keep above CODEJAIL_ADMISSION['max_waiting'] + 1.", unit="threads"),
    Name("CODEJAIL_SERVICE_RECEIVE_TIMEOUT", "float", 20, (PROCESS_ENV,),
         "Seconds a request has to arrive whole (headers and body) before it is answered 408 and closed; "
         "waiting holds no thread (gunicorn_worker.py).", unit="s"),
    Name("CODEJAIL_SERVICE_TIMEOUT", "int", 30, (PROCESS_ENV,), "Seconds before a silent worker is replaced.",
         unit="s"),
    Name("CODEJAIL_SERVICE_LOG_LEVEL", "str", "info", (PROCESS_ENV,), "Log level of gunicorn and the app."),
    Name("CODEJAIL_SERVICE_CFG", "path", None, (PROCESS_ENV,),
         "The YAML configuration file (production settings; provision.sh writes /etc/codejail-service/config.yml)."),
)

BY_NAME = {entry.name: entry for entry in TABLE}


def default(name):
    """The one default of ``name``."""
    return BY_NAME[name].default


def read_by(reader):
    """{name ``reader`` reads: Name} for every row it reads."""
    return {entry.name_for(reader): entry for entry in TABLE if reader in entry.readers}
