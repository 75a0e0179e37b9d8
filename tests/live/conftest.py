"""
The live API suite: the real service (gunicorn as the app user, sudo, the sandbox
user, our kernel confinement), tested over HTTP the way the LMS calls it.

- Against a deployment: ``CODEJAIL_LIVE_URL=http://host:8550 pytest tests/live``.
- On this host (``make test-live``, as root, after ``deploy/provision.sh``): this
  file starts ``deploy/serve.sh`` on a free local port, waits for ``/health/`` 200,
  and stops it at the end.
- Sabotage (``make test-sabotage``): the host is provisioned with our confinement
  layer off (``CODEJAIL_CONFINEMENT=off``) and ``CODEJAIL_LIVE_SABOTAGE=1`` is set.
  Every ``test_deny_*`` that our layer covers must then FAIL, and is reported as
  passed only if it did; every other test must still pass. So no deny test can
  pass for the wrong reason. Deny tests that rlimits or codejail itself cover carry
  ``@pytest.mark.outside_layer`` and must pass in both modes.

Test names: ``test_deny_*`` (an attack refused), ``test_allow_*`` (its nearest
allowed twin), ``test_support_*`` (what graders need).
"""
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SABOTAGE = os.environ.get("CODEJAIL_LIVE_SABOTAGE") == "1"
# The whole suite again with runs forked by the slots' zygotes (docs/decisions/0007-warm-sandbox.rst).
# Runs forked by the slots' zygotes (CODEJAIL_WARM_SANDBOX, the default) unless CODEJAIL_LIVE_WARM=0:
# fresh interpreters, the opt-out (make test-live-fresh).
WARM = os.environ.get("CODEJAIL_LIVE_WARM", "1") != "0"
# CODEJAIL_ZYGOTE_MAX_RUNS for the service, when set (else its default).
ZYGOTE_MAX_RUNS = int(os.environ.get("CODEJAIL_LIVE_ZYGOTE_MAX_RUNS", "0"))
REMOTE_URL = os.environ.get("CODEJAIL_LIVE_URL")
# A variable in the web app's environment that no sandboxed run may see
# (the Dockerfile sets it too, for runs against a deployment).
CANARY_NAME = "CODEJAIL_ENV_CANARY"
SANDBOX_USER = os.environ.get("CODEJAIL_SANDBOX_USER", "codejail-sandbox")


def pytest_configure(config):
    config.addinivalue_line("markers", "outside_layer: a deny test that rlimits or codejail "
                            "itself cover, not our confinement layer (must pass in sabotage mode too)")


def service_config_with(lines, parent=None):
    """
    ``(directory, path)`` of a copy of the host's service config (``CODEJAIL_SERVICE_CFG``, else
    /etc/codejail-service/config.yml) with ``lines`` added (a YAML key given again replaces the
    first); the app user can read it. The caller removes the directory. ``parent``: where to make
    it (default: beside that config, where the service's AppArmor profile lets the app read; in
    /tmp it may read only files of its own).
    """
    # The config the service would otherwise read (the AppArmor VM names its own).
    base_path = os.environ.get("CODEJAIL_SERVICE_CFG", "/etc/codejail-service/config.yml")
    directory = tempfile.mkdtemp(prefix="cjlive-cfg.", dir=parent or os.path.dirname(base_path))
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "config.yml")
    with open(base_path, encoding="utf-8") as base, \
            open(path, "w", encoding="utf-8") as config:
        config.write(base.read() + "\n" + "\n".join(lines) + "\n")
    os.chmod(path, 0o644)
    return directory, path


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_health(url, process, want_ok, timeout=90):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the service exited with status {process.returncode}")
        try:
            last = requests.get(url + "/health/", timeout=5)
            if last.status_code == 200 or (not want_ok and last.status_code == 503):
                return last
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"/health/ did not pass in {timeout} s: {last.text if last is not None else 'no answer'}")


@pytest.fixture(scope="session")
def service():
    """Base URL of a running service (started here unless CODEJAIL_LIVE_URL is set)."""
    with running_service() as started:
        yield started


@contextlib.contextmanager
def running_service(extra_config=()):
    """
    ``{"url", "local"}`` of the service: the one at CODEJAIL_LIVE_URL, else deploy/serve.sh started
    here (with the host's config plus ``extra_config`` lines) and stopped on exit.
    """
    if REMOTE_URL:
        _wait_for_health(REMOTE_URL.rstrip("/"), None, want_ok=not SABOTAGE)
        yield {"url": REMOTE_URL.rstrip("/"), "local": False}
        return
    if os.geteuid() != 0:
        pytest.exit("the live suite starts the service as the app user: run it as root (make test-live)", 2)
    port = _free_port()
    env = {**os.environ, "CODEJAIL_SERVICE_BIND": f"127.0.0.1:{port}",
           CANARY_NAME: "canary-" + secrets.token_hex(8), "CODEJAIL_SERVICE_WORKERS": "4"}
    extra = list(extra_config)
    if SABOTAGE:  # execute although the startup checks fail: that is the point of this run
        extra.append("CODEJAIL_ENFORCE_STARTUP_CHECKS: false")
    extra.append(f"CODEJAIL_WARM_SANDBOX: {'true' if WARM else 'false'}")
    if ZYGOTE_MAX_RUNS:  # recycle zygotes often (the soak of make test-robustness)
        extra.append(f"CODEJAIL_ZYGOTE_MAX_RUNS: {ZYGOTE_MAX_RUNS}")
    config_dir = None
    if extra:
        config_dir, env["CODEJAIL_SERVICE_CFG"] = service_config_with(extra)
    log = open(os.path.join(tempfile.gettempdir(), "cjlive-service.log"), "wb")
    # Stopped with the suite, even one stopped by SIGTERM (as by Ctrl-C: pytest then tears down):
    # else it would serve on, sharing the pool's slots with the next suite's service, and its
    # stop would end the new one's zygotes and runs.
    sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    process = subprocess.Popen(["bash", os.path.join(REPO, "deploy", "serve.sh")], env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, process, want_ok=not SABOTAGE)
        yield {"url": url, "local": True}
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        if config_dir:
            shutil.rmtree(config_dir)


@pytest.fixture(scope="session")
def host_sockets(service):
    """World-writable UNIX sockets of root's, standing in for D-Bus or journald."""
    if not service["local"]:
        pytest.skip("needs sockets on the service's host")
    directory = tempfile.mkdtemp(prefix="cjlive-sockets.", dir="/run")
    os.chmod(directory, 0o755)
    paths = {"stream": os.path.join(directory, "stream.sock"), "dgram": os.path.join(directory, "dgram.sock")}
    stream = socket.socket(socket.AF_UNIX)
    stream.bind(paths["stream"])
    stream.listen(8)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(paths["dgram"])
    for path in paths.values():
        os.chmod(path, 0o777)
    yield paths
    stream.close()
    dgram.close()
    shutil.rmtree(directory)


class Result:
    """One code-exec answer: HTTP status, globals, emsg."""

    def __init__(self, response, seconds=None):
        self.seconds = seconds  # of the attempt answered (not of the ones shed with 503 before it)
        self.status = response.status_code
        self.content_type = response.headers.get("Content-Type")
        self.body = response.json()
        self.globals = self.body.get("globals_dict", {})
        self.emsg = self.body.get("emsg")

    def __repr__(self):
        return f"Result({self.status}, {json.dumps(self.body)[:2000]})"


@pytest.fixture(scope="session")
def run(service):
    """Run code through POST /api/v0/code-exec exactly as edx-platform's remote_exec does."""
    def _run(code, globals_dict=None, files=None, python_path=None, limit_overrides_context=None,
             timeout=(0.5, 30)):
        payload = {
            "code": code,
            "globals_dict": globals_dict or {},
            "python_path": python_path,
            "limit_overrides_context": limit_overrides_context,
            "slug": "live-test",
            "unsafely": False,
        }
        for _ in range(10):
            started = time.monotonic()
            response = requests.post(service["url"] + "/api/v0/code-exec", data={"payload": json.dumps(payload)},
                                     files=files, timeout=timeout)
            # Shed because it queued behind a busy run of the same worker (CODEJAIL_ADMISSION):
            # retry as Retry-After says, so tests that run requests concurrently see their answer.
            if response.status_code != 503 or "Retry-After" not in response.headers:
                break
            time.sleep(min(float(response.headers["Retry-After"]), 1.0))
        return Result(response, time.monotonic() - started)
    return _run


@pytest.fixture(autouse=True)
def _no_processes_from_earlier_tests(service):
    """Start each test with no sandbox process about (the sabotage run has no reaper)."""
    if not service["local"]:
        return
    deadline = time.monotonic() + 10
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)


def _is_layer_deny_test(item):
    return item.name.startswith("test_deny_") and item.get_closest_marker("outside_layer") is None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In sabotage mode, a deny test covered by our layer must fail: invert its outcome."""
    outcome = yield
    report = outcome.get_result()
    if not SABOTAGE or report.when != "call" or not _is_layer_deny_test(item):
        return
    if report.failed:
        report.outcome = "passed"
        report.sections.append(("sabotage", "failed with the confinement layer off, as it must"))
        report.longrepr = None
    elif report.passed:
        report.outcome = "failed"
        report.longrepr = ("SABOTAGE: this deny test passed with our confinement layer off, so it "
                           "does not prove the layer (mark it outside_layer if something else covers it)")


def sandbox_users():
    """The sandbox user and its pool (``<user>-<i>``, a user per run at once) as provisioned on this host."""
    pool = re.compile(re.escape(SANDBOX_USER) + r"(-[0-9]+)?")
    return sorted(entry.pw_name for entry in pwd.getpwall() if pool.fullmatch(entry.pw_name))


def sandbox_processes():
    """
    PIDs of processes running as any sandbox user (the pool included) on this host: what runs
    left. The slots' zygotes (CODEJAIL_WARM_SANDBOX) live as long as the service and are not
    counted; the runs they fork are (a zygote is the app's child, a run is a zygote's).
    """
    result = subprocess.run(["pgrep", "-u", ",".join(sandbox_users())], capture_output=True, text=True,
                            check=False)
    return [pid for pid in map(int, result.stdout.split()) if not _is_zygote(pid)]


def zygotes():
    """
    PIDs of the slots' zygotes (CODEJAIL_WARM_SANDBOX) on this host: two a slot, light and full;
    not the full one's spare (its child, a zygote's too, forked anew for each of its runs).
    """
    found = _zygotes_and_spares()
    return {pid for pid in found if not _is_spare(pid, found)}


def spares():
    """PIDs of the full zygotes' spares on this host (``zygotes``)."""
    found = _zygotes_and_spares()
    return {pid for pid in found if _is_spare(pid, found)}


def _zygotes_and_spares():
    result = subprocess.run(["pgrep", "-u", ",".join(sandbox_users())], capture_output=True, text=True,
                            check=False)
    return {pid for pid in map(int, result.stdout.split()) if _is_zygote(pid)}


def _is_spare(pid, zygote_pids):
    """A zygote whose parent's parent is a zygote too: the light zygote's full one's spare."""
    try:
        parent = _stat_fields(pid)[0]
        return parent in zygote_pids and _stat_fields(parent)[0] in zygote_pids
    except (FileNotFoundError, ProcessLookupError):
        return False


def _stat_fields(pid):
    """(ppid, session) of ``pid``, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return int(fields[1]), int(fields[3])


def _is_zygote(pid):
    """
    A slot's zygote, light or full, or the full one's spare (confinement/zygote.py): the app
    started the light one (sudo execs it in place), which forked the full one, which forks its
    spare; all stay in the service's session, as their parent (a gunicorn process, or a zygote).
    A run's processes (same command line: forked) descend from a zygote and take a session of
    their own (setsid), so a run's process left behind, even re-parented to gunicorn's master, is
    never taken for a zygote.
    """
    try:
        if not _cmdline(pid).endswith(ZYGOTE_CMDLINE_END):
            return False
        parent, session = _stat_fields(pid)
        return session == _stat_fields(parent)[1]
    except (FileNotFoundError, ProcessLookupError):
        return False


ZYGOTE_CMDLINE_END = b"codejail_confinement/zygote.py\0"


def _cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read()


@pytest.fixture
def aftermath(run, service):
    """Check the service after the test's hostile run(s) (aftermath.py)."""
    from .aftermath import Aftermath  # aftermath.py imports this module

    after = Aftermath(run, service)
    yield after
    after.check()


@pytest.fixture
def known_gap(run, service):
    """
    For the xfail cases, and deny tests that leak when the sabotage run turns the layer off: the
    aftermath is checked in the test body (so a failure there is the
    expected failure), then, as root, any run directory the gap leaked is removed, so the rest
    of the suite starts clean.
    """
    from .aftermath import Aftermath  # aftermath.py imports this module

    after = Aftermath(run, service)
    yield after
    if service["local"]:
        for directory in after.leftovers(wait=10)[1]:
            subprocess.run(["chmod", "-R", "u+rwx", directory], check=False)
            shutil.rmtree(directory, ignore_errors=True)
