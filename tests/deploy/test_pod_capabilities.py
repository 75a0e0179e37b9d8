"""
The Deployment's container privileges are exactly what codejail's sudo needs.

Runs codejail's real path (the app venv's codejail, sudo, the sandbox user and
venv made by deploy/provision.sh) as the app user under the capability bounding
set that deploy/kubernetes/deployment.yaml gives the container, with
``setpriv``, the same kernel mechanism a container runtime uses. Then takes
away one capability at a time, and sets no_new_privs (what
``allowPrivilegeEscalation: false`` would do), to show each one is needed.

Needs root and a host provisioned by deploy/provision.sh: `make test-deploy-host`.
"""
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "deployment.yaml"
APP_PYTHON = "/opt/codejail-service/venv/bin/python"
SANDBOX_PYTHON = "/opt/codejail-service/sandbox-venv/bin/python"

# Where this host's provisioning has the runs make their directories: with a tmpfs per pool
# slot (CODEJAIL_RUN_DIR_ROOT), slot 0's, as its user; else the temp directory (as in the image).
_ROOT = yaml.safe_load(Path("/etc/codejail-service/config.yml").read_text()).get("CODEJAIL_RUN_DIR_ROOT") \
    if Path("/etc/codejail-service/config.yml").exists() else None
RUN_DIR_PARENT, SANDBOX_USER = (f"{_ROOT}/0", "codejail-sandbox-0") if _ROOT else (None, "codejail-sandbox")

# One ordinary run, then one that outlives REALTIME and must be killed by
# codejail's `sudo pkill -9 -g <pgid>` within about REALTIME seconds.
PROBE = textwrap.dedent(f"""
    import json, tempfile, time
    from codejail import jail_code
    from codejail.safe_exec import safe_exec, SafeExecException
    tempfile.tempdir = {RUN_DIR_PARENT!r}
    jail_code.configure("python", {SANDBOX_PYTHON!r}, user={SANDBOX_USER!r})
    for name, value in {{"REALTIME": 2, "CPU": 5, "NPROC": 15, "VMEM": 512 * 2**20}}.items():
        jail_code.set_limit(name, value)
    result = {{}}
    g = {{"x": 16}}
    try:
        safe_exec("x = x + 1", g)
        result["run"] = g["x"]
    except SafeExecException as exc:
        result["run"] = str(exc)
    start = time.monotonic()
    try:
        safe_exec("import time; time.sleep(8)", {{}})
        result["timeout"] = "not killed"
    except SafeExecException as exc:
        result["timeout"] = str(exc)
    result["timeout_seconds"] = time.monotonic() - start
    print(json.dumps(result))
""")


def container_capabilities():
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    caps = container["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    return [cap.lower() for cap in caps["add"]], container["securityContext"]["allowPrivilegeEscalation"]


def run_as_container(capabilities, no_new_privs=False):
    """Run PROBE as the app user with only these capabilities in the bounding set."""
    import json

    argv = ["setpriv", "--bounding-set", ",".join(["-all"] + [f"+{cap}" for cap in capabilities]),
            "--inh-caps=-all", "--reuid=180001", "--regid=180001", "--clear-groups"]
    if no_new_privs:
        argv.append("--no-new-privs")
    result = subprocess.run(argv + [APP_PYTHON, "-c", PROBE], cwd="/tmp", capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", autouse=True)
def provisioned_host():
    assert os.geteuid() == 0, "needs root (setpriv changes users and capabilities)"
    for path in (APP_PYTHON, SANDBOX_PYTHON, "/etc/sudoers.d/codejail-service"):
        assert os.path.exists(path), f"{path} missing: run deploy/provision.sh first"


@pytest.fixture(scope="module")
def deployment_caps():
    caps, allow_escalation = container_capabilities()
    assert allow_escalation is True
    return caps


def test_deployment_capabilities_run_and_kill_sandboxed_code(deployment_caps):
    result = run_as_container(deployment_caps)
    assert result["run"] == 17
    assert "status code: -9" in result["timeout"]
    assert result["timeout_seconds"] < 4
    # No sudo complaint leaks into the student's error message.
    assert "sudo:" not in result["timeout"]


def test_deployment_capabilities_suffice_when_the_app_user_is_crowded(deployment_caps):
    # RLIMIT_NPROC (15 here) is inherited by sudo and counted against the app user's real UID,
    # host-wide. If sudo forked before running the command (Debian's default `use_pty`), a node
    # where the app UID already has 15 processes (a busy pod, a second replica) would fail every
    # run with "sudo: unable to fork" unless sudo held CAP_SYS_RESOURCE. This pod has not got it.
    crowd = [subprocess.Popen(["setpriv", "--reuid=180001", "--regid=180001", "--clear-groups", "sleep", "60"])
             for _ in range(16)]
    try:
        result = run_as_container(deployment_caps)
    finally:
        for process in crowd:
            process.kill()
            process.wait()
    assert result["run"] == 17, result
    assert "status code: -9" in result["timeout"]


def test_without_setuid_sudo_cannot_become_the_sandbox_user(deployment_caps):
    result = run_as_container([cap for cap in deployment_caps if cap != "setuid"])
    assert "Operation not permitted" in str(result["run"]) and "sudo" in str(result["run"])


def test_without_setgid_sudo_cannot_become_the_sandbox_user(deployment_caps):
    result = run_as_container([cap for cap in deployment_caps if cap != "setgid"])
    assert "unable to change to root gid" in str(result["run"])


def test_without_kill_a_run_outlives_its_time_limit(deployment_caps):
    # pkill runs as root but may not signal another UID's processes.
    result = run_as_container([cap for cap in deployment_caps if cap != "kill"])
    assert result["run"] == 17
    assert result["timeout_seconds"] > 6


def test_without_audit_write_sudo_noise_reaches_the_student(deployment_caps):
    result = run_as_container([cap for cap in deployment_caps if cap != "audit_write"])
    assert "sudo: unable to send audit message" in result["timeout"]


def test_no_new_privs_stops_sudo(deployment_caps):
    # allowPrivilegeEscalation: false sets no_new_privs on the container's processes.
    result = run_as_container(deployment_caps, no_new_privs=True)
    assert "no new privileges" in str(result["run"])
