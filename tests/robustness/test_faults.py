"""
Faults (``make test-faults``, as root, on a provisioned host): each test starts its own service,
breaks one thing, checks the service's answer, and restores the host in a ``finally`` — the
rest of ``make test`` runs after these.

- a worker killed mid-run: gunicorn replaces it, and no sandbox process of its run survives;
- the sandbox venv missing, or unreadable to the sandbox: /health/ 503 naming the failure;
- sudo misconfigured (our sudoers file gone): /health/ 503;
- /tmp full: a clear emsg, and the service stays up.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest
import requests
from live.aftermath import holds_a_slot, run_dirs, service_pids
from live.conftest import REPO, _free_port, _wait_for_health, sandbox_processes, service_config_with, zygotes

SANDBOX_VENV = "/opt/codejail-service/sandbox-venv"
SUDOERS = "/etc/sudoers.d/codejail-service"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or os.environ.get("CODEJAIL_LIVE_URL"),
                                reason="fault injection needs root on the service's own host")


class Service:
    """gunicorn via deploy/serve.sh on a free port, optionally wrapped (e.g. in a mount namespace)."""

    def __init__(self, wrapper=(), warm=False):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CODEJAIL_SERVICE_BIND": f"127.0.0.1:{self.port}", "CODEJAIL_SERVICE_WORKERS": "4"}
        # Runs forked by the slots' zygotes (the default; docs/decisions/0007-warm-sandbox.rst), or
        # fresh interpreters (the opt-out): said either way.
        # In /run, not /tmp: a wrapped service may get a /tmp of its own (test_fault_tmp_full).
        self.config_dir, env["CODEJAIL_SERVICE_CFG"] = service_config_with(
            [f"CODEJAIL_WARM_SANDBOX: {'true' if warm else 'false'}"], parent="/run")
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen([*wrapper, "bash", os.path.join(REPO, "deploy", "serve.sh")], env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def health(self, want_ok):
        return _wait_for_health(self.url, self.process, want_ok=want_ok, timeout=60)

    def workers(self, count=4, timeout=10):
        """The PIDs of its ``count`` gunicorn workers, once all are up (in ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while len(workers := service_pids(self.url)[1]) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return workers

    def run(self, code, globals_dict=None):
        payload = {"code": code, "globals_dict": globals_dict or {}}
        import json
        return requests.post(self.url + "/api/v0/code-exec", data={"payload": json.dumps(payload)}, timeout=30)

    def stop(self):
        if self.config_dir:
            shutil.rmtree(self.config_dir, ignore_errors=True)
        if self.process.poll() is not None:
            self.log.close()
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@pytest.fixture
def start():
    """Start services for one test; stop them after it, and remove (as root) run dirs they leaked."""
    dirs_before = run_dirs()
    started = []

    def _start(wrapper=(), warm=False):
        service = Service(wrapper, warm)
        started.append(service)
        return service

    yield _start
    for service in started:
        service.stop()
    # A worker killed mid-run leaves its run directory (test_fault_worker_killed_mid_run_leaves_no_run_dir).
    for directory in run_dirs() - dirs_before:
        shutil.rmtree(directory, ignore_errors=True)


def _kill_a_worker_mid_run(service):
    """Start a long run and SIGKILL its worker: (worker PID, sandbox PIDs and run dirs before)."""
    workers = service.workers()  # all of them: /health/ answers as soon as the first one is up
    before = set(sandbox_processes())
    dirs_before = run_dirs()
    # Sleeps well past the kill; with its worker gone nobody enforces REALTIME any more.
    answer = []
    runner = threading.Thread(target=lambda: answer.append(_swallow(service.run, "import time\ntime.sleep(20)")))
    runner.start()
    started = time.monotonic()
    deadline = started + 15  # of the run's 20 s; a loaded CI host can be slow to start it
    victim, seen = None, []
    while victim is None and time.monotonic() < deadline:
        new = set(sandbox_processes()) - before
        if new:  # the run is running: its worker holds its slot
            holders = [w for w in workers if holds_a_slot(w)]
            victim = holders[0] if holders else None
            seen.append((round(time.monotonic() - started, 2), sorted(new), holders))
        time.sleep(0.05)
    assert victim, (f"no worker of {workers} held a slot while the run ran; seen {seen[:5]}; "
                    f"answer {answer}; workers now {service_pids(service.url)[1]}")
    os.kill(victim, signal.SIGKILL)
    runner.join()
    return victim, before, dirs_before


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm-sandbox"])
def test_fault_worker_killed_mid_run(start, warm):
    service = start(warm=warm)
    service.health(want_ok=True)
    zygotes_before = zygotes()
    victim, before, _ = _kill_a_worker_mid_run(service)
    # The master's child_exit recovered the dead worker's slot: killed what its run still ran
    # (its process groups), never the slot's zygote.
    deadline = time.monotonic() + 3
    while set(sandbox_processes()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(sandbox_processes()) - before == set(), "a sandbox process outlived its worker"
    assert zygotes() == zygotes_before, "a slot's zygote was ended with the dead worker's run"
    # gunicorn replaced the worker; the service answers.
    now = service.workers()
    assert len(now) == 4 and victim not in now
    service.health(want_ok=True)
    assert service.run("x = x + 1", {"x": 16}).json() == {"globals_dict": {"x": 17}}


def _swallow(call, *args):
    try:
        response = call(*args)
    except requests.RequestException as error:
        return repr(error)  # its worker was killed: the connection drops
    return response.status_code, response.text[:300]


@pytest.mark.parametrize("fault", ["missing", "unreadable"])
def test_fault_sandbox_venv(start, fault):
    aside = SANDBOX_VENV + ".fault-test"
    mode = os.stat(SANDBOX_VENV).st_mode & 0o7777
    try:
        if fault == "missing":
            os.rename(SANDBOX_VENV, aside)
        else:
            os.chmod(SANDBOX_VENV, 0o700)  # root only: the sandbox users cannot start its python
        service = start()
        health = service.health(want_ok=False)
        assert health.status_code == 503
        basic = health.json()["checks"]["basic_execution"]
        assert basic["passed"] is False and basic["reason"], basic
        refused = service.run("x = 1")
        assert refused.status_code == 503 and "startup safety checks" in refused.json()["error"]
    finally:
        if fault == "missing":
            os.rename(aside, SANDBOX_VENV)
        else:
            os.chmod(SANDBOX_VENV, mode)


def test_fault_sudo_misconfigured(start):
    aside = tempfile.mktemp(prefix="codejail-sudoers.", dir="/root")
    shutil.move(SUDOERS, aside)
    try:
        service = start()
        health = service.health(want_ok=False)
        assert health.status_code == 503
        basic = health.json()["checks"]["basic_execution"]
        assert basic["passed"] is False, basic
    finally:
        shutil.move(aside, SUDOERS)
        os.chmod(SUDOERS, 0o440)
    assert subprocess.run(["visudo", "-c", "-q"], check=False).returncode == 0


def test_fault_tmp_full(start):
    """The service's own /tmp (a private mount namespace: the host's /tmp is untouched) is full."""
    # serve.sh is opened before the mount: the checkout itself may live under /tmp.
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'exec 3<"$2" && mount -t tmpfs -o size=4m,mode=1777 codejail-fault-tmp /tmp && exec "$1" /dev/fd/3',
               "sh"]
    service = start(wrapper)
    service.health(want_ok=True)
    assert service.run("x = x + 1", {"x": 1}).json() == {"globals_dict": {"x": 2}}
    master, _ = service_pids(service.url)
    fill = subprocess.run(["nsenter", "-t", str(master), "-m", "dd", "if=/dev/zero", "of=/tmp/filler", "bs=64k"],
                          capture_output=True, text=True, check=False)
    assert "No space left" in fill.stderr, fill.stderr
    answer = service.run("x = 1", {"x": 0})
    assert answer.status_code == 200, answer.text
    assert "no space left for its run directory" in answer.json()["emsg"], answer.text
    assert answer.json()["globals_dict"] == {"x": 0}
    assert requests.get(service.url + "/health/", timeout=10).status_code == 200
    subprocess.run(["nsenter", "-t", str(master), "-m", "rm", "-f", "/tmp/filler"], check=True)
    assert service.run("x = x + 1", {"x": 1}).json() == {"globals_dict": {"x": 2}}


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm-sandbox"])
def test_fault_worker_killed_mid_run_leaves_no_run_dir(start, warm):
    service = start(warm=warm)
    service.health(want_ok=True)
    _, _, dirs_before = _kill_a_worker_mid_run(service)
    deadline = time.monotonic() + 5
    while run_dirs() - dirs_before and time.monotonic() < deadline:
        time.sleep(0.1)
    left = run_dirs() - dirs_before
    assert left == set(), f"run directories left by the killed worker: {sorted(left)}"
