"""
The Tutor plugin's rendered environment (deploy/tutor-contrib-codejail-service), as
``tutor config save`` wrote it into $TUTOR_ROOT: run by tests/deploy/tutor-test.sh
(``make test-tutor``), which installs the real Tutor and the plugin and saves the config first.
"""
import ast
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from test_dockerfile import (
    check_healthcheck,
    check_no_secrets,
    check_non_root_user,
    check_serving,
    parse,
)
from test_kubernetes import KUBE_DIR, documents, kubectl, mebibytes, pod_memory_floor_mib, run_dir_problems

pytestmark = pytest.mark.tutor

ENV = Path(os.environ.get("TUTOR_ROOT", "/nonexistent")) / "env"
PLUGIN = Path(__file__).resolve().parents[2] / "deploy" / "tutor-contrib-codejail-service" / "tutorcodejail_service"


def _plugin_defaults():
    tree = ast.parse((PLUGIN / "plugin.py").read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "DEFAULTS"]
    keys = [ast.literal_eval(k) for k in node.value.keys]
    values = [ast.literal_eval(v) if not isinstance(v, ast.Name) else None for v in node.value.values]
    return {f"CODEJAIL_SERVICE_{k}": v for k, v in zip(keys, values, strict=True)}


# The plugin's defaults, then what the test set (config.yml holds only what was set).
CONFIG = {**_plugin_defaults(), **(yaml.safe_load((ENV.parent / "config.yml").read_text()) if ENV.exists() else {})}
CLIENTS = ("lms", "cms", "lms-worker", "cms-worker")


@pytest.fixture(scope="module")
def compose():
    """The local compose files merged, as docker-compose sees them (`docker-compose config`)."""
    result = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "-f", "docker-compose.prod.yml", "config"],
                            cwd=ENV / "local", capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def service(compose):
    return compose["services"]["codejail-service"]


@pytest.fixture(scope="module")
def service_config():
    return yaml.safe_load((ENV / "plugins" / "codejail-service" / "apps" / "config.yml").read_text())


def test_dev_compose_files_are_valid_too():
    result = subprocess.run(["docker-compose", "-f", "local/docker-compose.yml", "-f", "dev/docker-compose.yml",
                             "config", "-q"], cwd=ENV, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_service_runs_as_the_deployment_does(service):
    assert service["image"] == CONFIG["CODEJAIL_SERVICE_DOCKER_IMAGE"]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert sorted(service["cap_add"]) == ["AUDIT_WRITE", "KILL", "SETGID", "SETUID"]
    assert "security_opt" not in service  # Docker's default seccomp profile; no AppArmor step
    (volume,) = service["volumes"]
    assert volume.endswith("/plugins/codejail-service/apps/config.yml:/etc/codejail-service/config.yml:ro")


def test_each_slot_has_a_capped_tmpfs_of_the_app_user(service, service_config):
    root, limit = service_config["CODEJAIL_RUN_DIR_ROOT"], service_config["CODEJAIL_RUN_DIR_MAX_BYTES"]
    tmpfs = dict(entry.split(":", 1) for entry in service["tmpfs"])
    uid = CONFIG["CODEJAIL_SERVICE_APP_UID"]
    for i in range(service_config["CODEJAIL_SANDBOX_POOL_SIZE"]):
        options = dict(o.partition("=")[::2] for o in tmpfs[f"{root}/{i}"].split(","))
        assert int(options["size"].rstrip("m")) * 2**20 <= limit
        assert (options["uid"], options["gid"], options["mode"]) == (str(uid), str(uid), "0755")
        assert {"noexec", "nosuid", "nodev"} <= set(options)
    assert "mode=1777" in tmpfs["/tmp"]


def test_service_is_alone_on_an_internal_network_the_lms_and_cms_join(compose, service):
    assert list(service["networks"]) == ["codejail-service"]
    assert compose["networks"]["codejail-service"]["internal"] is True
    for name in CLIENTS:
        assert set(compose["services"][name]["networks"]) == {"default", "codejail-service"}, name
    others = [name for name, s in compose["services"].items()
              if "codejail-service" in (s.get("networks") or {}) and name not in CLIENTS + ("codejail-service",)]
    assert others == []


def test_service_config_names_the_image_pool_and_limits(service_config):
    assert service_config["CODEJAIL_ENABLED"] is True
    assert service_config["CODEJAIL_SANDBOX_POOL_SIZE"] == CONFIG["CODEJAIL_SERVICE_SANDBOX_POOL_SIZE"]
    assert service_config["CODE_JAIL"]["limits"] == CONFIG["CODEJAIL_SERVICE_LIMITS"]
    assert service_config["CODE_JAIL"]["python_bin"] == "/opt/codejail-service/sandbox-venv/bin/python"
    host, port = CONFIG["CODEJAIL_SERVICE_EGRESS_CHECK_TARGET"].rsplit(":", 1)
    assert service_config["CODEJAIL_EGRESS_CHECK"] == {"host": host, "port": int(port), "timeout": 1.0}


@pytest.mark.parametrize("variant", ["lms", "cms"])
@pytest.mark.parametrize("settings", ["production.py", "development.py"])
def test_lms_and_cms_send_code_to_the_service(variant, settings):
    text = (ENV / "apps" / "openedx" / "settings" / variant / settings).read_text()
    assert "\nENABLE_CODEJAIL_REST_SERVICE = True\n" in text
    assert '\nCODE_JAIL_REST_SERVICE_HOST = "http://codejail-service:8550"\n' in text
    assert "\nCODE_JAIL_REST_SERVICE_CONNECT_TIMEOUT = 0.5\n" in text
    assert "\nCODE_JAIL_REST_SERVICE_READ_TIMEOUT = 3.5\n" in text


def test_image_definition_builds_our_service():
    stages = parse((ENV / "plugins" / "codejail-service" / "build" / "codejail-service" / "Dockerfile").read_text())
    service = stages[-1]
    assert service["from"] == CONFIG["CODEJAIL_SERVICE_BASE_IMAGE"]
    problems = (check_non_root_user(service) + check_healthcheck(service) + check_serving(service)
                + check_no_secrets(stages))
    assert problems == []
    (run,) = [args for keyword, args in service["instructions"] if keyword == "RUN"]
    assert "/src/deploy/provision.sh" in run and "CODEJAIL_RUN_DIR_MOUNT=runtime" in run
    assert f'CODEJAIL_APP_UID="{CONFIG["CODEJAIL_SERVICE_APP_UID"]}"' in run
    assert f'CODEJAIL_EXTRA_PIP_REQUIREMENTS="{" ".join(CONFIG["CODEJAIL_SERVICE_EXTRA_PIP_REQUIREMENTS"])}"' in run
    assert f'CODEJAIL_SANDBOX_REQUIREMENTS="{CONFIG["CODEJAIL_SERVICE_SANDBOX_REQUIREMENTS"]}"' in run
    assert f'CODEJAIL_SANDBOX_PYTHON="{CONFIG["CODEJAIL_SERVICE_SANDBOX_PYTHON"]}"' in run


# --- tutor k8s ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s():
    result = subprocess.run([kubectl(), "kustomize", str(ENV)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def ours(k8s, kind):
    (doc,) = [d for d in k8s if d["kind"] == kind and d["metadata"]["name"].startswith("codejail-service")]
    return doc


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
def test_k8s_objects_match_the_kubernetes_schemas(k8s, version):
    for doc in k8s:
        kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_deployment_caps_each_slot_and_runs_as_ours(k8s):
    deployment = ours(k8s, "Deployment")
    config = yaml.safe_load(ours(k8s, "ConfigMap")["data"]["config.yml"])
    assert run_dir_problems(deployment, config) == []
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == CONFIG["CODEJAIL_SERVICE_APP_UID"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["SETUID", "SETGID", "KILL", "AUDIT_WRITE"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "appArmorProfile" not in container["securityContext"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/codejail-service/config.yml"]
    assert volumes[mount["name"]]["configMap"]["name"] == ours(k8s, "ConfigMap")["metadata"]["name"]
    workers = int({item["name"]: item["value"] for item in container["env"]}["CODEJAIL_SERVICE_WORKERS"])
    assert mebibytes(container["resources"]["limits"]["memory"]) >= pod_memory_floor_mib(config, workers)


def test_k8s_liveness_is_our_deployments(k8s):
    """Alive while /health/ answers 200 or 503 (tests/deploy/test_kubernetes.py runs the probe)."""
    (container,) = ours(k8s, "Deployment")["spec"]["template"]["spec"]["containers"]
    (main,) = documents(KUBE_DIR / "deployment.yaml")
    (main_container,) = main["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"] == main_container["livenessProbe"]


def test_k8s_service_and_network_policy(k8s):
    (port,) = ours(k8s, "Service")["spec"]["ports"]
    assert port["port"] == 8550
    policy = ours(k8s, "NetworkPolicy")["spec"]
    assert policy["egress"] == [] and set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = policy["ingress"]
    (expression,) = rule["from"][0]["podSelector"]["matchExpressions"]
    assert set(expression["values"]) == set(CLIENTS)


def test_image_definition_passes_hadolint():
    import shutil
    import sys

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    dockerfile = ENV / "plugins" / "codejail-service" / "build" / "codejail-service" / "Dockerfile"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
