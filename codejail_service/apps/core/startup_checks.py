"""
Startup safety checks: prove, once per process, that the sandbox really confines code.

Each check is a named function returning a :class:`CheckResult`. The sandbox checks take a
``Run`` (one per slot of the pool) and run real code through
:func:`~codejail_service.apps.core.execution.run_code` (the same path requests take, under
codejail's limits, so none can hang); ``run_dir_cap`` and ``webapp_egress`` take no run.

``run_startup_checks()`` runs every registered check once and caches the results in module
state; ``codejail_service/wsgi.py`` calls it after the application is built (with gunicorn's
``preload_app`` the master runs it and the workers inherit the results). It is never called on
import, in tests or in management commands. ``/health/`` and the code-exec view read the
cached results through :func:`get_startup_check_results` / :func:`startup_checks_passed`.

To add a check, decorate a function of the run with ``@startup_check("name")``; return
``CheckResult.ok(**details)`` or ``CheckResult.fail(reason, **details)``. Details (JSON-safe)
are shown in /health/ next to ``passed`` and ``reason``.
"""

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass, field

from django.conf import settings
from edx_django_utils.monitoring import set_custom_attribute

from codejail_service.apps.core.execution import run_code
from codejail_service.sandbox import config, lifecycle, pool
from codejail_service.sandbox.run import WARM, Run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one startup check: passed, or failed with a reason; optional details."""

    passed: bool
    reason: str | None = None
    details: dict = field(default_factory=dict)

    @classmethod
    def ok(cls, **details):
        return cls(passed=True, details=details)

    @classmethod
    def fail(cls, reason, **details):
        return cls(passed=False, reason=reason, details=details)

    def as_json(self):
        """The check's entry in /health/: ``{"passed", "reason", **details}``."""
        return {**self.details, "passed": self.passed, "reason": self.reason}


# name -> check function, in registration (and execution) order.
STARTUP_CHECKS = {}

# name -> CheckResult once run_startup_checks() has run; None before.
_results = None


def startup_check(name, uses_sandbox=True):
    """
    Register the decorated function as the startup check called ``name``.

    A check that ``uses_sandbox`` is called with a run, once for every user of the sandbox pool,
    holding that user's slot (pool.acquire), since each is a separately provisioned user and
    sudoers rule; any other check is called with nothing.
    """

    def register(check):
        if name in STARTUP_CHECKS:
            raise ValueError(f"Startup check {name!r} is already registered")
        check.uses_sandbox = uses_sandbox
        STARTUP_CHECKS[name] = check
        return check

    return register


def _sandbox_probe(run, code, slug):
    """
    Run probe ``code`` in the sandbox; it must set the global ``outcome``.

    Returns ``(outcome, None)``, or ``(None, failed CheckResult)`` when the probe itself did not
    run to completion: a check must never pass just because the sandbox is broken.
    """
    globals_out, emsg = run_code(code, {}, run=run, slug=f"startup_check:{slug}")
    if emsg is not None:
        return None, CheckResult.fail(f"probe did not run to completion: {emsg}")
    if "outcome" not in globals_out:
        return None, CheckResult.fail("probe finished without reporting an outcome")
    return globals_out["outcome"], None


@startup_check("basic_execution")
def check_basic_execution(run):
    """The sandbox runs code at all: ``x = x + 1`` with x=16 gives 17."""
    globals_out, emsg = run_code("x = x + 1", {"x": 16}, run=run, slug="startup_check:basic_execution")
    if emsg is not None:
        return CheckResult.fail(f"execution failed: {emsg}")
    if globals_out.get("x") != 17:
        return CheckResult.fail(f"expected x == 17 after x = x + 1 with x = 16, got {globals_out.get('x')!r}")
    return CheckResult.ok()


# Each probe reports "denied" for the expected refusal, and names anything else it saw. The code
# must run to completion to report at all, so a probe broken by a typo cannot pass.
DISK_ESCAPE_PROBE = """
import os
try:
    os.listdir('/')
    outcome = 'allowed'
except PermissionError:
    outcome = 'denied'
except Exception as exc:
    outcome = 'unexpected: ' + repr(exc)
"""

PROCESS_EXEC_PROBE = """
import errno, subprocess
try:
    subprocess.run(['/usr/bin/true'], check=False)
    outcome = 'allowed'
except OSError as exc:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EAGAIN):
        outcome = 'denied'
    else:
        outcome = 'unexpected: ' + repr(exc)
except Exception as exc:
    outcome = 'unexpected: ' + repr(exc)
"""

NETWORK_SOCKET_PROBE = """
import socket
import stat
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    outcome = 'allowed'
except PermissionError:
    outcome = 'denied'
except Exception as exc:
    outcome = 'unexpected: ' + repr(exc)
"""


def _denial_check(run, code, slug, what):
    outcome, failure = _sandbox_probe(run, code, slug)
    if failure is not None:
        return failure
    if outcome == "denied":
        return CheckResult.ok()
    if outcome == "allowed":
        return CheckResult.fail(f"sandboxed code was able to {what}")
    return CheckResult.fail(f"sandboxed code trying to {what} got {outcome}")


@startup_check("disk_escape")
def check_disk_escape(run):
    """Sandboxed code cannot list ``/`` (PermissionError)."""
    return _denial_check(run, DISK_ESCAPE_PROBE, "disk_escape", "list /")


@startup_check("process_exec")
def check_process_exec(run):
    """Sandboxed code cannot start another process (EACCES, EPERM or EAGAIN)."""
    return _denial_check(run, PROCESS_EXEC_PROBE, "process_exec", "start /usr/bin/true")


@startup_check("network_socket")
def check_network_socket(run):
    """Sandboxed code cannot create an IPv4 socket (PermissionError)."""
    return _denial_check(run, NETWORK_SOCKET_PROBE, "network_socket", "create an AF_INET socket")


# Reads what our confinement layer (codejail_service/confinement, run by a .pth file in the
# sandbox venv) applied to the probe's own process.
CONFINEMENT_LAYERS_PROBE = """
try:
    import codejail_confinement
    outcome = dict(codejail_confinement.STATUS)
except ImportError:
    outcome = {'mode': 'not-installed'}
"""


@startup_check("confinement_layers")
def check_confinement_layers(run):
    """
    Our Landlock + seccomp layer ran in the sandbox, and which parts of it are active.

    Fails when the layer did not run at all (not installed in the sandbox venv, or its hook
    skipped): that would fail open. ``mode: off`` is an operator's explicit choice for hosts
    where AppArmor confines (the deny checks above must then pass through AppArmor alone).
    """
    outcome, failure = _sandbox_probe(run, CONFINEMENT_LAYERS_PROBE, "confinement_layers")
    if failure is not None:
        return failure
    details = {key: outcome.get(key) for key in ("mode", "layers", "missing", "landlock_abi", "memory_bound",
                                                "cpu_bound")}
    # Forked by its slot's zygote (ADR 7) exactly when the run is warm.
    details["warm_sandbox"] = outcome.get("forked_by") == "zygote"
    warm = run.mode == WARM
    if details["warm_sandbox"] != warm:
        return CheckResult.fail(f"warm sandbox {'on' if warm else 'off'}, but the probe "
                                f"was forked by {outcome.get('forked_by', 'a fresh interpreter')}", **details)
    if settings.CODEJAIL_WARM_SANDBOX and not config.current().warm:  # the default, on a host without a pool
        details["warm_sandbox_note"] = ("CODEJAIL_WARM_SANDBOX needs a sandbox user pool and "
                                        "CODEJAIL_ZYGOTE_SCRIPT: fresh interpreters")
    if outcome.get("mode") not in ("enforce", "off"):
        return CheckResult.fail(f"the confinement layer did not run in the sandbox (mode {outcome.get('mode')!r})",
                                **details)
    # A run's total memory across its processes (ADR 8): the reaper's watchdog bounds it.
    if not details["memory_bound"] and not settings.CODEJAIL_ALLOW_UNBOUNDED_RUN_MEMORY:
        return CheckResult.fail("nothing bounds a run's total memory across its processes (the layer's "
                                "watchdog is off); set CODEJAIL_ALLOW_UNBOUNDED_RUN_MEMORY to accept that",
                                **details)
    if outcome.get("mode") == "off":
        return CheckResult.ok(**details, note="switched off by the operator (confinement.json)")
    return CheckResult.ok(**details)


@startup_check("run_dir_cap", uses_sandbox=False)
def check_run_dir_cap():
    """
    Each sandbox slot's run directories live on a size-limited filesystem of their own.

    With ``CODEJAIL_RUN_DIR_ROOT``, ``<root>/<i>`` must, for every slot i, be a directory of the
    app user that no one else may write to, on a filesystem of its own (a mount: else the cap is
    the host's disk) of at most ``CODEJAIL_RUN_DIR_MAX_BYTES``. Without it, runs write to the
    temp directory with no total cap; the check says so and passes.
    """
    root = settings.CODEJAIL_RUN_DIR_ROOT
    if not root:
        return CheckResult.ok(capped=False)
    limit = settings.CODEJAIL_RUN_DIR_MAX_BYTES
    if not pool.pool_users():
        return CheckResult.fail("CODEJAIL_RUN_DIR_ROOT needs a sandbox user pool (CODEJAIL_SANDBOX_POOL_SIZE > 0)")
    sizes = []
    for index in range(len(pool.pool_users())):
        path = os.path.join(root, str(index))
        try:
            info, above = os.lstat(path), os.stat(root)
            fs = os.statvfs(path)
        except OSError as exc:
            return CheckResult.fail(f"{path}: {exc.strerror}")
        size = fs.f_blocks * fs.f_frsize
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return CheckResult.fail(f"{path} must be a directory of the app user that others cannot write")
        if info.st_dev == above.st_dev:
            return CheckResult.fail(f"{path} is not a filesystem of its own (mount a size-limited tmpfs there)")
        if size > limit:
            return CheckResult.fail(f"{path} holds {size} bytes, more than CODEJAIL_RUN_DIR_MAX_BYTES ({limit})")
        sizes.append(size)
    return CheckResult.ok(capped=True, bytes_per_run=max(sizes))


# connect() errors that mean "nothing came back": the packet was dropped or refused locally.
EGRESS_BLOCKED_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPERM, errno.EACCES}


@startup_check("webapp_egress", uses_sandbox=False)
def check_webapp_egress():
    """
    The web app itself cannot reach the outside network.

    A TCP connect to ``settings.CODEJAIL_EGRESS_CHECK`` (an IP literal, so DNS plays no part)
    must be blocked: a timeout, an unreachable network/host, or a local firewall refusal.
    Success, or ECONNREFUSED (a RST came back from the target), proves packets get through.
    """
    target = settings.CODEJAIL_EGRESS_CHECK
    host, port, timeout = target["host"], int(target["port"]), float(target["timeout"])
    details = {"target": f"{host}:{port}"}
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        return CheckResult.ok(**details, blocked_by=f"no answer within {timeout} s")
    except OSError as exc:
        if exc.errno in EGRESS_BLOCKED_ERRNOS:
            return CheckResult.ok(**details, blocked_by=errno.errorcode.get(exc.errno, str(exc.errno)))
        if exc.errno == errno.ECONNREFUSED:
            return CheckResult.fail(f"connection to {host}:{port} was refused by the target: egress is open", **details)
        return CheckResult.fail(f"connecting to {host}:{port} failed unexpectedly: {exc!r}", **details)
    return CheckResult.fail(f"connected to {host}:{port}: the web app can reach the network", **details)


def run_startup_checks():
    """Run every registered check once per process, cache and return the results."""
    global _results  # module state is the per-process cache
    if _results is not None:
        return _results
    results = {}
    lifecycle.start_zygotes()
    for name, check in STARTUP_CHECKS.items():
        result = _run_check_for_every_sandbox_user(name, check)
        results[name] = result
        # .. custom_attribute_name: codejail_service.startup_check.<name>
        # .. custom_attribute_description: Result of one startup safety check, recorded once per
        #   process at startup: "pass", or "fail: <reason>". Names: basic_execution, disk_escape,
        #   process_exec, network_socket, webapp_egress (and any check registered later).
        set_custom_attribute(
            f"codejail_service.startup_check.{name}", "pass" if result.passed else f"fail: {result.reason}"
        )
        if result.passed:
            log.info("Startup check %s passed %s", name, result.details or "")
        else:
            log.error("Startup check %s FAILED: %s", name, result.reason)
    _results = results
    return _results


def _run_check(name, check, *run):
    try:
        return check(*run)
    except Exception as exc:  # a crashing check fails, it does not stop startup
        log.exception("Startup check %s raised", name)
        return CheckResult.fail(f"check raised {exc!r}")


def _run_check_for_every_sandbox_user(name, check):
    """One check's result: with a sandbox user pool, it passes only if it passed for every user."""
    if not getattr(check, "uses_sandbox", True):
        return _run_check(name, check)
    users = pool.pool_users()
    if not users:
        with Run.in_slot(pool.acquire(None)) as run:
            return _run_check(name, check, run)
    for index, user in enumerate(users):
        with Run.in_slot(pool.acquire(index)) as run:
            result = _run_check(name, check, run)
        if not result.passed:
            return CheckResult.fail(f"as sandbox user {user}: {result.reason}", **result.details)
    return CheckResult.ok(**result.details, sandbox_users=users)


def get_startup_check_results():
    """The cached results (name -> CheckResult), or None if the checks have not run."""
    return _results


def startup_checks_passed():
    """True only when the checks have run and every one passed."""
    return _results is not None and all(result.passed for result in _results.values())


def reset_startup_checks():
    """Forget the cached results (for tests)."""
    global _results
    _results = None
