"""
Tutor plugin for codejail-service: the LMS and CMS send course Python code to it instead of
running it themselves.

Enabling it adds the service to ``tutor local``/``tutor dev`` (a docker-compose service on an
internal network of its own, which only the LMS/CMS and their workers join) and to ``tutor k8s``
(a Deployment, a Service and a NetworkPolicy), points the LMS and CMS at it, and defines its
image for ``tutor images build``. See README.rst.
"""
from __future__ import annotations

import os
from glob import glob
from importlib import resources as importlib_resources

import yaml
from tutor import hooks

from .__about__ import __version__

# Settings: CODEJAIL_SERVICE_<name> (tutor config save --set CODEJAIL_SERVICE_...=...).
DEFAULTS = {
    "VERSION": __version__,
    "DOCKER_IMAGE": "{{ DOCKER_REGISTRY }}codejail-service:{{ CODEJAIL_SERVICE_VERSION }}",
    # `tutor images build codejail-service`: a .tar.gz of codejail-service's source (a release
    # archive of its repository), the Debian 12 base image, and extra pip options for the build.
    "SOURCE_URL": "",
    "BASE_IMAGE": "docker.io/debian:bookworm-20250520-slim",
    "BUILD_PIP_OPTIONS": "",
    # The sandbox's packages: a set of codejail-service's requirements/sandbox/sets.txt (the Open
    # edX platform's: current, current-py311, teak) or a pins file in its source; empty: the
    # newest set for SANDBOX_PYTHON (in BASE_IMAGE; Debian 12 has 3.11: current-py311).
    "SANDBOX_REQUIREMENTS": "",
    "SANDBOX_PYTHON": "/usr/bin/python3.11",
    # Packages course authors' code may import beyond the standard sandbox set (pip requirement
    # specifiers), installed into the sandbox venv of the image held to its pinned versions.
    "EXTRA_PIP_REQUIREMENTS": [],
    # UIDs used by nothing else on the host or node (RLIMIT_NPROC is per UID, host-wide).
    "APP_UID": 180001,
    "SANDBOX_UID": 180100,
    # Sandbox users in the image = runs at once; each has a tmpfs of RUN_DIR_MIB for its runs.
    "SANDBOX_POOL_SIZE": 4,
    "RUN_DIR_MIB": 64,
    "WORKERS": 4,
    "WARM_SANDBOX": True,
    "ENABLED": True,
    # codejail's limits per run (CODE_JAIL["limits"]) and per limit_overrides_context.
    "LIMITS": {"CPU": 1, "REALTIME": 3, "VMEM": 536870912, "FSIZE": 1048576, "NPROC": 15, "PROXY": 0},
    "LIMIT_OVERRIDES": {},
    # The webapp_egress startup check's target ("host:port"); empty: the service's default.
    "EGRESS_CHECK_TARGET": "",
    # The LMS/CMS side (edx-platform's remote_exec client).
    "HOST": "codejail-service",
    "CONNECT_TIMEOUT": 0.5,
    "READ_TIMEOUT": 3.5,
    # Optional: an AppArmor profile loaded on the host (apparmor/openedx_codejail_service of
    # codejail-service) to apply to the container as a second layer. Empty: none (our Landlock +
    # seccomp layer needs no host step).
    "APPARMOR_PROFILE": "",
    "K8S_REPLICAS": 1,
}

hooks.Filters.CONFIG_DEFAULTS.add_items([(f"CODEJAIL_SERVICE_{key}", value) for key, value in DEFAULTS.items()])

# The image: tutor images build/pull/push codejail-service.
hooks.Filters.IMAGES_BUILD.add_item((
    "codejail-service",
    ("plugins", "codejail-service", "build", "codejail-service"),
    "{{ CODEJAIL_SERVICE_DOCKER_IMAGE }}",
    (),
))
hooks.Filters.IMAGES_PULL.add_item(("codejail-service", "{{ CODEJAIL_SERVICE_DOCKER_IMAGE }}"))
hooks.Filters.IMAGES_PUSH.add_item(("codejail-service", "{{ CODEJAIL_SERVICE_DOCKER_IMAGE }}"))

# Templates: env/plugins/codejail-service/{apps,build}/...
hooks.Filters.ENV_TEMPLATE_ROOTS.add_item(str(importlib_resources.files("tutorcodejail_service") / "templates"))
hooks.Filters.ENV_TEMPLATE_TARGETS.add_items([
    ("codejail-service/apps", "plugins"),
    ("codejail-service/build", "plugins"),
])

# Patches: one file per patch in patches/, named after it.
for path in glob(str(importlib_resources.files("tutorcodejail_service") / "patches" / "*")):
    with open(path, encoding="utf-8") as patch_file:
        hooks.Filters.ENV_PATCHES.add_item((os.path.basename(path), patch_file.read()))

# The LMS/CMS containers (and their workers) that send code to the service.
CLIENT_SERVICES = ("lms", "cms", "lms-worker", "cms-worker")
NETWORK = "codejail-service"


# Rendered compose files that define (some of) those containers.
COMPOSE_FILES = (("local", "docker-compose.yml"), ("local", "docker-compose.prod.yml"), ("dev", "docker-compose.yml"))


@hooks.Actions.ENV_SAVED.add()
def _join_clients_to_the_internal_network(root_env: str, _config) -> None:
    """
    Declare the service's internal network in the rendered compose files and add the LMS/CMS
    containers and their workers to it (keeping them on their default network).

    The service must not reach anything (its webapp_egress startup check refuses to run code
    otherwise), so it is on an ``internal`` network only. Tutor's patches can add a service, but
    neither a top-level network nor a network of the LMS's, so this is done on the rendered files.
    """
    local = os.path.join(root_env, "local", "docker-compose.yml")
    if not os.path.exists(local) or f"\n  {NETWORK}:" not in open(local, encoding="utf-8").read():
        return  # not rendered with our service (e.g. only k8s files saved)
    for parts in COMPOSE_FILES:
        path = os.path.join(root_env, *parts)
        if os.path.exists(path):
            _add_network(path)


def _add_network(path: str) -> None:
    with open(path, encoding="utf-8") as compose_file:
        compose = yaml.safe_load(compose_file)
    services = compose.get("services") or {}
    for name in CLIENT_SERVICES:
        if name not in services:
            continue
        networks = services[name].get("networks") or ["default"]
        if isinstance(networks, dict):
            networks.setdefault(NETWORK, None)
        elif NETWORK not in networks:
            networks = [*networks, NETWORK]
        services[name]["networks"] = networks
    compose["networks"] = {**(compose.get("networks") or {}), NETWORK: {"internal": True}}
    with open(path, "w", encoding="utf-8") as compose_file:
        compose_file.write("# Rendered by Tutor; the codejail-service plugin added its internal network.\n")
        yaml.safe_dump(compose, compose_file, sort_keys=False, default_flow_style=False)
