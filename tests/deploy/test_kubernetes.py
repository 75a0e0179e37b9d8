"""
The Kubernetes manifests: valid against the Kubernetes API schemas, rendered by
kustomize, and consistent with the image, the AppArmor profile and each other.

Schemas: kubernetes-validate's bundled OpenAPI schemas (offline), strict mode
(an unknown field is an error), for the oldest Kubernetes that has
``securityContext.appArmorProfile`` (1.30) and the newest the tool knows.
"""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE_DIR = ROOT / "deploy" / "kubernetes"


def configuration_table():
    """codejail_service/configuration.py (data only), loaded on its own: this venv has not the app."""
    spec = importlib.util.spec_from_file_location("configuration", ROOT / "codejail_service" / "configuration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
MANIFESTS = sorted(p for p in KUBE_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
APPARMOR_PROFILE = ROOT / "apparmor" / "openedx_codejail_service"
POD_LABELS = {"app.kubernetes.io/name": "codejail-service"}


def documents(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kubectl():
    return shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")


@pytest.fixture(scope="module")
def rendered():
    """`kubectl kustomize deploy/kubernetes`: what an operator applies."""
    result = subprocess.run([kubectl(), "kustomize", str(KUBE_DIR)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(result.stdout) if doc}


def by_kind(rendered, kind):
    (doc,) = [doc for (k, _), doc in rendered.items() if k == kind and doc["metadata"]["name"] == "codejail-service"]
    return doc


@pytest.fixture(scope="module")
def deployment(rendered):
    return by_kind(rendered, "Deployment")


@pytest.fixture(scope="module")
def container(deployment):
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# --- Schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_kubernetes_schema(path, version):
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_rendered_kustomization_matches_kubernetes_schema(rendered, version):
    for doc in rendered.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_rejects_an_unknown_field(container):
    # The twin of the schema tests: strict validation really looks inside the pod spec.
    bad = yaml.safe_load((KUBE_DIR / "deployment.yaml").read_text())
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["apparmorProfile"] = {"type": "Localhost"}
    with pytest.raises(kubernetes_validate.ValidationError, match="apparmorProfile"):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


def test_schema_validation_rejects_apparmor_field_before_1_30():
    # Why 1.30 is the oldest version we validate for: the field did not exist before.
    doc = yaml.safe_load((KUBE_DIR / "deployment.yaml").read_text())
    with pytest.raises(kubernetes_validate.ValidationError, match="appArmorProfile"):
        kubernetes_validate.validate(doc, "1.29.0", strict=True)


def test_kustomization_lists_every_manifest(rendered):
    listed = yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in MANIFESTS]
    kinds = {kind for kind, _ in rendered}
    assert kinds == {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler", "DaemonSet", "ConfigMap"}


# --- The Deployment --------------------------------------------------------------------------


def test_pod_runs_as_the_image_app_user(deployment):
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 180001
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_container_keeps_only_what_sudo_needs(container):
    security = container["securityContext"]
    # sudo is setuid root: no_new_privs (allowPrivilegeEscalation: false) would stop it.
    # test_pod_capabilities.py proves each capability is needed, on the real sudo.
    assert security["allowPrivilegeEscalation"] is True
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID", "KILL", "AUDIT_WRITE"]}


def test_container_runs_under_the_repository_apparmor_profile(container):
    profile_names = re.findall(r"^profile (\S+)", APPARMOR_PROFILE.read_text(), flags=re.MULTILINE)
    assert container["securityContext"]["appArmorProfile"] == {
        "type": "Localhost", "localhostProfile": profile_names[0]}
    assert profile_names[0] == "openedx_codejail_service"


def test_readiness_waits_for_the_startup_checks(container):
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health/"
    assert probe["port"] == "http"
    assert container["ports"] == [{"name": "http", "containerPort": 8550, "protocol": "TCP"}]


def test_serving_environment(container):
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["CODEJAIL_SERVICE_BIND"] == "0.0.0.0:8550"
    assert env["CODEJAIL_SERVICE_CFG"] == "/etc/codejail-service/config.yml"
    assert env["CODEJAIL_SERVICE_WORKERS"] == "4"
    assert "--max-requests 1000" in env["GUNICORN_CMD_ARGS"]


def test_config_map_is_mounted_as_the_service_config(rendered, deployment, container):
    (config_map,) = [doc for (kind, _), doc in rendered.items() if kind == "ConfigMap"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert mount["mountPath"] == "/etc/codejail-service/config.yml" and mount["subPath"] == "config.yml"
    config = yaml.safe_load(config_map["data"]["config.yml"])
    # Off until /health/ passes on the new deployment (docs/deployment.rst).
    assert config["CODEJAIL_ENABLED"] is False
    assert config["CODE_JAIL"]["python_bin"] == "/opt/codejail-service/sandbox-venv/bin/python"
    assert config["CODE_JAIL"]["user"] == "codejail-sandbox"
    assert set(config["CODE_JAIL"]["limits"]) == {"CPU", "REALTIME", "VMEM", "FSIZE", "NPROC", "PROXY"}


def test_memory_limit_covers_every_run_at_its_memory_bound_every_zygote_and_worker(rendered, container):
    (config_map,) = [doc for (kind, _), doc in rendered.items() if kind == "ConfigMap"]
    config = yaml.safe_load(config_map["data"]["config.yml"])
    slots = config["CODEJAIL_SANDBOX_POOL_SIZE"]
    workers = int({item["name"]: item["value"] for item in container["env"]}["CODEJAIL_SERVICE_WORKERS"])
    limit = container["resources"]["limits"]["memory"]
    # At most one run per pool slot at once, each up to VMEM; each worker ~100 MiB; and what the
    # memory-backed emptyDirs (each slot's run directory, /tmp) hold counts against the pod too.
    pod = rendered[("Deployment", "codejail-service")]["spec"]["template"]["spec"]
    tmpfs = sum(mebibytes(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"]
                if v.get("emptyDir", {}).get("medium") == "Memory")
    assert tmpfs >= slots * 64
    assert mebibytes(limit) >= pod_memory_floor_mib(config, workers)


# What a slot's warm sandbox holds (its zygote: ~196 MiB RSS measured, docs/decisions/0007-warm-sandbox.rst).
ZYGOTE_MIB = 200
# What the image's confinement layer lets a run's processes hold together, x VMEM
# (run_memory_factor in confinement.json: the configuration table's default).
RUN_MEMORY_FACTOR = configuration_table().default("CODEJAIL_RUN_MEMORY_FACTOR")
# What one descriptor of a run can hold in kernel buffers (docs/decisions/0009-run-bounds-across-processes.rst:
# a socket's wmem_default, 212,992 bytes, plus one buffer's overshoot), and each process's descriptors.
RUN_OPEN_FILES = configuration_table().default("CODEJAIL_RUN_OPEN_FILES")
SOCKET_BUFFER_BYTES = 212_992 + 65_536


def pod_memory_floor_mib(config, workers):
    """
    The worst case of a pod's memory (MiB), docs/deployment.rst "Workers and memory per pod": every
    pool slot runs one run holding all its processes may (run_memory_factor x VMEM) and its
    sockets' buffers full (NPROC x run_open_files descriptors), beside its zygote, with its run
    directory full (memory-backed emptyDirs count against the pod), plus each worker (~100 MiB)
    and /tmp (64 MiB).
    """
    vmem_mib = config["CODE_JAIL"]["limits"]["VMEM"] // 2**20
    zygote = ZYGOTE_MIB if config.get("CODEJAIL_WARM_SANDBOX", True) else 0
    run_dir = config["CODEJAIL_RUN_DIR_MAX_BYTES"] // 2**20
    buffers = config["CODE_JAIL"]["limits"]["NPROC"] * RUN_OPEN_FILES * SOCKET_BUFFER_BYTES // 2**20
    return (config["CODEJAIL_SANDBOX_POOL_SIZE"] * (RUN_MEMORY_FACTOR * vmem_mib + buffers + zygote + run_dir)
            + workers * 100 + 64)


def test_liveness_accepts_503_but_readiness_does_not(container):
    # Liveness must not restart a pod whose checks failed (a restart fixes no configuration).
    script = container["livenessProbe"]["exec"]["command"][-1]
    assert "e.code != 503" in script
    assert container["startupProbe"]["exec"]["command"][-1] == script


@pytest.mark.parametrize("status, alive", [(200, True), (503, True), (500, False)])
def test_liveness_probe_script(container, status_server, run_probe, status, alive):
    status_server.status = status
    exit_status = run_probe(container["livenessProbe"]["exec"]["command"], status_server.server_address[1])
    assert (exit_status == 0) is alive


def test_liveness_probe_fails_when_nothing_listens(container, status_server, run_probe):
    port = status_server.server_address[1]
    status_server.shutdown()
    status_server.server_close()
    assert run_probe(container["livenessProbe"]["exec"]["command"], port) != 0


def test_one_replica_per_node(deployment):
    # The sandbox UID's NPROC budget is per node: two replicas on a node would share it.
    (term,) = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == POD_LABELS


def mebibytes(quantity):
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2])


def run_dir_problems(deployment, config):
    """
    What keeps the run_dir_cap startup check from passing in a pod of this Deployment: each pool
    slot needs a memory-backed emptyDir (a tmpfs of sizeLimit) at <CODEJAIL_RUN_DIR_ROOT>/<i>, at
    most CODEJAIL_RUN_DIR_MAX_BYTES, made the app user's with mode 0755 by the init container.
    """
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    root, limit = config.get("CODEJAIL_RUN_DIR_ROOT"), config.get("CODEJAIL_RUN_DIR_MAX_BYTES")
    if not root or not limit:
        return ["config.yml sets no CODEJAIL_RUN_DIR_ROOT / CODEJAIL_RUN_DIR_MAX_BYTES: runs are not capped"]
    problems = []
    init_script = " ".join(" ".join(c.get("command", []) + c.get("args", [])) for c in pod.get("initContainers", []))
    uid = pod["securityContext"]["runAsUser"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for i in range(config["CODEJAIL_SANDBOX_POOL_SIZE"]):
        path = f"{root}/{i}"
        empty_dir = volumes.get(mounts.get(path), {}).get("emptyDir")
        if not empty_dir or empty_dir.get("medium") != "Memory" or "sizeLimit" not in empty_dir:
            problems.append(f"{path}: not a memory-backed emptyDir with a sizeLimit")
            continue
        if mebibytes(empty_dir["sizeLimit"]) * 2**20 > limit:
            problems.append(f"{path}: sizeLimit {empty_dir['sizeLimit']} is over CODEJAIL_RUN_DIR_MAX_BYTES")
        if not re.search(rf"chown {uid}:{uid} [^&]*{re.escape(path)}\b", init_script) or \
                not re.search(rf"chmod 0755 [^&]*{re.escape(path)}\b", init_script):
            problems.append(f"{path}: no init container makes it the app user's (chown {uid}, chmod 0755)")
    return problems


def volume(deployment, name):
    (found,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    return found


@pytest.fixture(scope="module")
def service_config(rendered):
    (config_map,) = [doc for (kind, _), doc in rendered.items() if kind == "ConfigMap"]
    return yaml.safe_load(config_map["data"]["config.yml"])


def test_each_slot_has_a_capped_run_directory(deployment, service_config):
    assert run_dir_problems(deployment, service_config) == []


@pytest.mark.parametrize("breakage, expected", [
    (lambda d, c: d["spec"]["template"]["spec"]["volumes"].pop(), "runs/3: not a memory-backed emptyDir"),
    (lambda d, c: volume(d, "runs-0")["emptyDir"].pop("medium"), "runs/0: not a memory-backed emptyDir"),
    (lambda d, c: volume(d, "runs-1")["emptyDir"].update(sizeLimit="1024Mi"), "runs/1: sizeLimit 1024Mi is over"),
    (lambda d, c: d["spec"]["template"]["spec"].pop("initContainers"), "runs/0: no init container"),
    (lambda d, c: c.pop("CODEJAIL_RUN_DIR_ROOT"), "runs are not capped"),
    (lambda d, c: c.update(CODEJAIL_SANDBOX_POOL_SIZE=5), "runs/4: not a memory-backed emptyDir"),
])
def test_run_directory_problems_are_reported(deployment, service_config, breakage, expected):
    import copy

    deployment, config = copy.deepcopy(deployment), copy.deepcopy(service_config)
    breakage(deployment, config)
    assert any(expected in problem for problem in run_dir_problems(deployment, config))


def test_root_filesystem_is_read_only_and_tmp_is_a_sized_tmpfs(deployment, container):
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert volumes[tmp]["emptyDir"]["medium"] == "Memory" and "sizeLimit" in volumes[tmp]["emptyDir"]


def test_init_container_has_only_chown_and_fowner(deployment, container):
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    security = init["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert init["image"] == container["image"]
    assert "chmod 1777 /tmp" in init["args"][0]  # emptyDirs are 0777 without the sticky bit


# --- Service, NetworkPolicy, PDB, HPA, AppArmor loader -------------------------------------


def test_selectors_match_the_pods(rendered, deployment):
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "codejail-service"
    assert by_kind(rendered, "Service")["spec"]["selector"] == POD_LABELS
    assert by_kind(rendered, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == POD_LABELS
    assert by_kind(rendered, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == POD_LABELS
    target = by_kind(rendered, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_service_listens_on_8550(rendered):
    (port,) = by_kind(rendered, "Service")["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (8550, "http")


def test_network_policy_denies_all_egress(rendered):
    spec = by_kind(rendered, "NetworkPolicy")["spec"]
    assert "Egress" in spec["policyTypes"]
    assert spec.get("egress", []) == []


def test_network_policy_admits_only_lms_and_cms_pods(rendered):
    spec = by_kind(rendered, "NetworkPolicy")["spec"]
    assert "Ingress" in spec["policyTypes"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": 8550, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # no ipBlock, no namespaceSelector: same namespace only
    (expression,) = peer["podSelector"]["matchExpressions"]
    assert expression["operator"] == "In"
    assert set(expression["values"]) == {"lms", "lms-worker", "cms", "cms-worker"}


def test_disruption_budget_and_autoscaler_keep_a_replica(rendered):
    assert by_kind(rendered, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    hpa = by_kind(rendered, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


def test_apparmor_loader_loads_the_profile_the_pods_use(rendered, container):
    loader = rendered[("DaemonSet", "codejail-service-apparmor-loader")]
    (loader_container,) = loader["spec"]["template"]["spec"]["containers"]
    script = loader_container["args"][0]
    assert "apparmor_parser --replace" in script
    profile = container["securityContext"]["appArmorProfile"]["localhostProfile"]
    assert f"^{profile} " in script
    assert loader_container["securityContext"]["privileged"] is True



def _loader_script(rendered, tmp_path, parser_body, loaded_at_start=False):
    """The loader DaemonSet's script, pointed at a fake apparmor_parser and securityfs file."""
    (loader_container,) = rendered[("DaemonSet", "codejail-service-apparmor-loader")]["spec"]["template"]["spec"][
        "containers"]
    profiles_dir = tmp_path / "profiles"
    profiles_dir.mkdir()
    (profiles_dir / "openedx_codejail_service").write_text("profile openedx_codejail_service {}\n")
    kernel = tmp_path / "kernel-profiles"
    kernel.write_text("openedx_codejail_service (enforce)\n" if loaded_at_start else "")
    calls = tmp_path / "calls"
    calls.write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    parser = bin_dir / "apparmor_parser"
    parser.write_text("#!/bin/sh\n" + parser_body.format(calls=calls, kernel=kernel))
    parser.chmod(0o755)
    script = (loader_container["args"][0]
              .replace("/etc/codejail-service/apparmor/", f"{profiles_dir}/")
              .replace("/sys/kernel/security/apparmor/profiles", str(kernel))
              .replace("sleep 300", "sleep 0.05"))
    return ["/bin/sh", "-c", script], {"PATH": f"{bin_dir}:/usr/bin:/bin"}, kernel, calls


LOADING_PARSER = 'echo "$@" >> {calls}\necho "openedx_codejail_service (enforce)" >> {kernel}\n'


def test_apparmor_loader_loads_then_reloads_when_the_profile_disappears(rendered, tmp_path):
    import time

    argv, env, kernel, calls = _loader_script(rendered, tmp_path, LOADING_PARSER)
    process = subprocess.Popen(argv, env=env)
    try:
        time.sleep(0.5)
        assert calls.read_text().count("--replace") == 1  # loaded once at start, then left alone
        kernel.write_text("")  # e.g. the host reloaded AppArmor and dropped our profile
        time.sleep(0.5)
        assert calls.read_text().count("--replace") == 2
        assert process.poll() is None  # a DaemonSet pod keeps running
    finally:
        process.kill()
        process.wait()


def test_apparmor_loader_fails_when_the_profile_does_not_compile(rendered, tmp_path):
    # The twin: a parser error ends the pod (set -e), so it shows in the pod's status and log.
    argv, env, _, _ = _loader_script(rendered, tmp_path, "echo 'syntax error' >&2\nexit 1\n")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode != 0
    assert "syntax error" in result.stderr
