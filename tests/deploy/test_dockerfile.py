"""
The Dockerfile's invariants, checked without a Docker engine (``make test-image`` builds and
runs it on one).

The image's logic lives in deploy/provision.sh (which CI runs for real) and this file checks
that the Dockerfile only wires it up correctly: pinned base, provisioning script, non-root user, health check, port,
command, no secrets. hadolint lints it as well (``make lint-docker``).

Each check is a function returning the problems it finds, tested on the real
Dockerfile (no problems) and on a broken variant (the problem is reported), so
a check cannot pass by finding nothing to look at.
"""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PROVISION = ROOT / "deploy" / "provision.sh"
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "deployment.yaml"
KUBE_CONFIG = ROOT / "deploy" / "kubernetes" / "config.yml"


def parse(text):
    """
    Return the stages of a Dockerfile: [{"name", "from", "instructions": [(KEYWORD, args)]}].

    Global ARGs (before the first FROM) go to a pseudo-stage named "global".
    Continuation lines are joined; comment lines inside them are dropped, as Docker does.
    """
    stages = [{"name": "global", "from": None, "instructions": []}]
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        logical = ""
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append({"name": name, "from": parts[0], "instructions": []})
        stages[-1]["instructions"].append((keyword, args))
    return stages


def global_args(stages):
    """Default values of the ARGs declared before the first FROM."""
    return dict(_arg(args) for keyword, args in stages[0]["instructions"] if keyword == "ARG")


def stage_args(stage):
    return dict(_arg(args) for keyword, args in stage["instructions"] if keyword == "ARG")


def _arg(args):
    name, _, default = args.partition("=")
    return name, default


def env_of(stage):
    """ENV settings of a stage (KEY=VALUE form)."""
    env = {}
    for keyword, args in stage["instructions"]:
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def last(stage, keyword):
    found = [args for kw, args in stage["instructions"] if kw == keyword]
    return found[-1] if found else None


def exec_form(args):
    """The argv of an exec-form CMD/HEALTHCHECK CMD (a JSON list), else None."""
    import json

    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


# --- The checks --------------------------------------------------------------------------


def check_pinned_base(stages):
    """Every stage starts from BASE_IMAGE, whose default is a dated tag or a digest."""
    problems = []
    base = global_args(stages).get("BASE_IMAGE", "")
    if not re.fullmatch(r"debian:bookworm-\d{8}(-slim)?(@sha256:[0-9a-f]{64})?|debian@sha256:[0-9a-f]{64}", base):
        problems.append(f"BASE_IMAGE default {base!r} is not a dated Debian bookworm tag or a digest")
    for stage in stages[1:]:
        if stage["from"] != "${BASE_IMAGE}":
            problems.append(f"stage {stage['name']} starts FROM {stage['from']}, not ${{BASE_IMAGE}}")
    return problems


def check_multi_stage(stages):
    named = [stage["name"] for stage in stages[1:]]
    problems = []
    if len(named) < 2:
        problems.append(f"expected a multi-stage build, found stages {named}")
    if named[-1:] != ["service"]:
        problems.append(f"the last (default) stage must be 'service', found {named[-1:]}")
    return problems


def check_provisioning(stage):
    """The service stage runs the one provisioning script with the UIDs from its build args."""
    runs = [args for keyword, args in stage["instructions"] if keyword == "RUN"]
    calls = [run for run in runs if "deploy/provision.sh" in run]
    if not calls:
        return ["no RUN calls deploy/provision.sh"]
    problems = []
    call = calls[0]
    for variable, arg in (("CODEJAIL_APP_UID", "APP_UID"), ("CODEJAIL_SANDBOX_UID", "SANDBOX_UID"),
                          ("CODEJAIL_SANDBOX_POOL_SIZE", "SANDBOX_POOL_SIZE")):
        if f'{variable}="${{{arg}}}"' not in call:
            problems.append(f"provision.sh is not given {variable} from the {arg} build arg")
    return problems


def check_non_root_user(stage):
    user = last(stage, "USER")
    if user is None:
        return ["no USER: the service would run as root"]
    uid = user.split(":")[0]
    uid = stage_args(stage).get(uid[2:-1], uid) if uid.startswith("${") else uid
    if not uid.isdigit():
        return [f"USER {user!r} is not numeric: Kubernetes' runAsNonRoot cannot verify a name"]
    if int(uid) == 0:
        return ["USER is root"]
    return []


def check_healthcheck(stage):
    healthcheck = last(stage, "HEALTHCHECK")
    if healthcheck is None:
        return ["no HEALTHCHECK"]
    if "127.0.0.1:8550/health/" not in healthcheck:
        return [f"HEALTHCHECK does not probe http://127.0.0.1:8550/health/: {healthcheck}"]
    return []


def check_serving(stage):
    problems = []
    if last(stage, "EXPOSE") != "8550":
        problems.append(f"EXPOSE is {last(stage, 'EXPOSE')!r}, not 8550")
    argv = exec_form(last(stage, "CMD") or "")
    expected = ["gunicorn", "-c", "python:codejail_service.gunicorn_config", "codejail_service.wsgi:application"]
    if argv != expected:
        problems.append(f"CMD is {argv}, expected {expected}")
    env = env_of(stage)
    wanted = {
        "CODEJAIL_SERVICE_BIND": "0.0.0.0:8550",
        "CODEJAIL_SERVICE_CFG": "/etc/codejail-service/config.yml",
        "DJANGO_SETTINGS_MODULE": "codejail_service.settings.production",
    }
    for key, value in wanted.items():
        if env.get(key) != value:
            problems.append(f"ENV {key} is {env.get(key)!r}, expected {value!r}")
    if not env.get("CODEJAIL_ENV_CANARY"):
        problems.append("ENV CODEJAIL_ENV_CANARY is not set (the live suite's env-leak test needs it)")
    return problems


SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE|API_?KEY|CREDENTIAL", re.IGNORECASE)


def check_no_secrets(stages):
    problems = []
    for stage in stages:
        for keyword, args in stage["instructions"]:
            if keyword in ("ENV", "ARG") and SECRET_NAME.search(args):
                problems.append(f"{keyword} {args} looks like a secret baked into the image")
            if keyword in ("COPY", "ADD") and re.search(r"\.ssh|\.netrc|\.pypirc|id_rsa|\.env\b", args):
                problems.append(f"{keyword} {args} copies credentials into the image")
    return problems


def all_problems(text):
    stages = parse(text)
    service = stages[-1]
    return (check_pinned_base(stages) + check_multi_stage(stages) + check_provisioning(service)
            + check_non_root_user(service) + check_healthcheck(service) + check_serving(service)
            + check_no_secrets(stages))


# --- The real Dockerfile -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile_text():
    return DOCKERFILE.read_text()


def test_dockerfile_meets_every_invariant(dockerfile_text):
    assert all_problems(dockerfile_text) == []


def test_default_uids_match_provision_script_and_deployment(dockerfile_text):
    service = parse(dockerfile_text)[-1]
    args = stage_args(service)
    script = PROVISION.read_text()
    assert f'app_uid="${{CODEJAIL_APP_UID:-{args["APP_UID"]}}}"' in script
    assert f'sandbox_uid="${{CODEJAIL_SANDBOX_UID:-{args["SANDBOX_UID"]}}}"' in script
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(args["APP_UID"])


def test_kubernetes_config_names_the_image_sandbox_pool_and_a_worker_count(dockerfile_text):
    # The pool's users exist only in the image: the mounted config must name the same pool
    # size. Runs share the pool's slots whichever worker serves them, so the worker count
    # need only be a positive number, not at most the pool.
    pool = int(stage_args(parse(dockerfile_text)[-1])["SANDBOX_POOL_SIZE"])
    config = yaml.safe_load(KUBE_CONFIG.read_text())
    assert config["CODEJAIL_SANDBOX_POOL_SIZE"] == pool
    (container,) = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]["containers"]
    workers = {e["name"]: e["value"] for e in container["env"]}["CODEJAIL_SERVICE_WORKERS"]
    assert workers.isdigit() and int(workers) >= 1


def test_apparmor_loader_stage_ships_the_repository_profile(dockerfile_text):
    stage = next(s for s in parse(dockerfile_text) if s["name"] == "apparmor-loader")
    copied = [args.split()[0] for keyword, args in stage["instructions"] if keyword == "COPY"]
    assert copied == ["apparmor/openedx_codejail_service"]
    assert (ROOT / copied[0]).is_file()


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    # The twin of the test above: hadolint really lints (an unpinned apt install is flagged).
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm-20250520-slim\nRUN apt-get install -y curl\n")
    result = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3008" in result.stdout


# --- Each check reports what it is for ------------------------------------------------------


def _broken(dockerfile_text, old, new):
    assert old in dockerfile_text, f"test needs {old!r} in the Dockerfile"
    return dockerfile_text.replace(old, new)


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("ARG BASE_IMAGE=debian:bookworm-20250520-slim", "ARG BASE_IMAGE=debian:bookworm",
         "not a dated Debian bookworm tag"),
        ("ARG BASE_IMAGE=debian:bookworm-20250520-slim", "ARG BASE_IMAGE=debian:latest",
         "not a dated Debian bookworm tag"),
        ("FROM ${BASE_IMAGE} AS service", "FROM python:3.11 AS service", "not ${BASE_IMAGE}"),
        ("/src/deploy/provision.sh", "/src/deploy/other.sh", "no RUN calls deploy/provision.sh"),
        ('CODEJAIL_APP_UID="${APP_UID}" ', "", "not given CODEJAIL_APP_UID"),
        ('CODEJAIL_SANDBOX_POOL_SIZE="${SANDBOX_POOL_SIZE}"', "", "not given CODEJAIL_SANDBOX_POOL_SIZE"),
        ("USER ${APP_UID}:${APP_UID}", "USER 0", "USER is root"),
        ("USER ${APP_UID}:${APP_UID}", "USER codejail-app", "not numeric"),
        ("USER ${APP_UID}:${APP_UID}", "", "no USER"),
        ("127.0.0.1:8550/health/", "127.0.0.1:8550/", "does not probe"),
        ("EXPOSE 8550", "EXPOSE 8000", "EXPOSE is '8000'"),
        ("CODEJAIL_SERVICE_BIND=0.0.0.0:8550", "CODEJAIL_SERVICE_BIND=127.0.0.1:8550",
         "CODEJAIL_SERVICE_BIND"),
        ("CODEJAIL_ENV_CANARY=", "CODEJAIL_ENV_CANARY_UNUSED=", "CODEJAIL_ENV_CANARY is not set"),
        ('"codejail_service.wsgi:application"]', '"codejail_service.wsgi:application", "--reload"]',
         "CMD is"),
        ("ENV CODEJAIL_ENV_CANARY", "ENV DB_PASSWORD=hunter2\nENV CODEJAIL_ENV_CANARY",
         "looks like a secret"),
    ],
)
def test_each_check_reports_its_problem(dockerfile_text, old, new, expected):
    problems = all_problems(_broken(dockerfile_text, old, new))
    assert any(expected in problem for problem in problems), problems


def test_single_stage_build_is_reported(dockerfile_text):
    service_only = dockerfile_text[dockerfile_text.index("FROM ${BASE_IMAGE} AS service"):]
    text = "ARG BASE_IMAGE=debian:bookworm-20250520-slim\n" + service_only
    assert any("multi-stage" in problem for problem in all_problems(text))


# --- The health check command itself ---------------------------------------------------------


@pytest.fixture(scope="module")
def healthcheck_argv(dockerfile_text):
    healthcheck = last(parse(dockerfile_text)[-1], "HEALTHCHECK")
    argv = exec_form(healthcheck[healthcheck.index("CMD ") + 4:])
    assert argv[0] == "/opt/codejail-service/venv/bin/python"
    return argv


def test_healthcheck_passes_when_health_answers_200(healthcheck_argv, status_server, run_probe):
    status_server.status = 200
    assert run_probe(healthcheck_argv, status_server.server_address[1]) == 0


def test_healthcheck_fails_when_health_answers_503(healthcheck_argv, status_server, run_probe):
    status_server.status = 503
    assert run_probe(healthcheck_argv, status_server.server_address[1]) != 0


def test_healthcheck_fails_when_nothing_listens(healthcheck_argv, status_server, run_probe):
    port = status_server.server_address[1]
    status_server.shutdown()
    status_server.server_close()
    assert run_probe(healthcheck_argv, port) != 0
