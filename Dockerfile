# codejail-service image. Every provisioning step lives in deploy/provision.sh,
# the script CI runs on each change; this file only orders the steps and sets
# the runtime defaults. Two targets:
#
#   docker build -t codejail-service .                          # the service
#   docker build --target apparmor-loader -t codejail-service-apparmor-loader .
#
# (No "# syntax=" line: BuildKit would fetch that frontend from Docker Hub; the
# builder built into Docker 20.10 and later reads this file, RUN --mount included.)
#
# Run it with a size-limited tmpfs per sandbox pool slot, owned by the app user,
# where each run's directory is made (the run_dir_cap startup check refuses to run
# code without), on a read-only root filesystem:
#
#   docker run --read-only --tmpfs /tmp:size=64m,mode=1777 \
#       --tmpfs /var/lib/codejail-service/runs/0:size=64m,nr_inodes=16384,uid=180001,gid=180001,mode=0755,noexec,nosuid,nodev \
#       ... (one per slot, 0 to SANDBOX_POOL_SIZE-1) \
#       --cap-drop ALL --cap-add SETUID --cap-add SETGID --cap-add KILL --cap-add AUDIT_WRITE \
#       -p 127.0.0.1:8550:8550 codejail-service
#
# See docs/deployment.rst (and docs/tutor.rst for the Tutor plugin).

# Debian 12.11 (bookworm) from the 2025-05-20 snapshot, the release CI runs
# deploy/provision.sh on. Pinned by dated tag; pin by digest in your own registry.
ARG BASE_IMAGE=debian:bookworm-20250520-slim

# ---------------------------------------------------------------------------
# apparmor-loader: loads the profile into a node's kernel
# (deploy/kubernetes/apparmor-loader.yaml). Built from the same commit as the
# service, so profile and service always match.
FROM ${BASE_IMAGE} AS apparmor-loader
RUN apt-get update \
    && apt-get install -y --no-install-recommends apparmor=3.0.8-3 \
    && rm -rf /var/lib/apt/lists/*
COPY apparmor/openedx_codejail_service /etc/codejail-service/apparmor/
CMD ["apparmor_parser", "--replace", "--verbose", "/etc/codejail-service/apparmor/openedx_codejail_service"]

# ---------------------------------------------------------------------------
# service (default target): gunicorn + the sandbox, provisioned exactly as on a host.
FROM ${BASE_IMAGE} AS service

# Large UIDs that nothing else on the host uses: RLIMIT_NPROC counts every
# process of a UID on the whole host, across containers.
ARG APP_UID=180001
ARG SANDBOX_UID=180100
# The pool: one sandbox user per run at once (UIDs SANDBOX_UID+1 ..), whichever
# worker serves it; the config's CODEJAIL_SANDBOX_POOL_SIZE must equal it.
ARG SANDBOX_POOL_SIZE=4
# The runtime's tmpfs per pool slot is at most this big (run_dir_cap checks it).
ARG RUN_DIR_MIB=64
# The sandbox's packages: a set of requirements/sandbox/sets.txt (the Open edX platform's:
# current, current-py311, teak) or a pins file in the build context (relative to it); empty: the
# newest set for the sandbox's Python. That Python must be in the base image (Debian 12: 3.11).
ARG CODEJAIL_SANDBOX_REQUIREMENTS=""
ARG CODEJAIL_SANDBOX_PYTHON=/usr/bin/python3.11
# More packages for the sandbox venv (pip requirement specifiers, space-separated),
# held to the sandbox's pinned versions: e.g. --build-arg CODEJAIL_EXTRA_PIP_REQUIREMENTS="tabulate==0.9.0".
ARG CODEJAIL_EXTRA_PIP_REQUIREMENTS=""
# Extra pip options for deploy/provision.sh, e.g. a package mirror or a wheelhouse
# in the build context: --build-arg CODEJAIL_PIP_OPTIONS="--no-index --find-links /src/wheelhouse".
# Build args are recorded in the image history: no credentials here.
ARG CODEJAIL_PIP_OPTIONS=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The checkout is bind-mounted for this one step, so no source tree, build
# directory or pip cache ends up in a layer. A build cannot mount: the pool slots'
# tmpfs mounts (CODEJAIL_RUN_DIR_MOUNT=runtime) are the container runtime's job.
RUN --mount=type=bind,target=/src \
    CODEJAIL_APP_UID="${APP_UID}" CODEJAIL_SANDBOX_UID="${SANDBOX_UID}" \
    CODEJAIL_SANDBOX_POOL_SIZE="${SANDBOX_POOL_SIZE}" \
    CODEJAIL_RUN_DIR_MIB="${RUN_DIR_MIB}" CODEJAIL_RUN_DIR_MOUNT=runtime \
    CODEJAIL_SANDBOX_REQUIREMENTS="${CODEJAIL_SANDBOX_REQUIREMENTS}" \
    CODEJAIL_SANDBOX_PYTHON="${CODEJAIL_SANDBOX_PYTHON}" \
    CODEJAIL_EXTRA_PIP_REQUIREMENTS="${CODEJAIL_EXTRA_PIP_REQUIREMENTS}" \
    CODEJAIL_PIP_OPTIONS="${CODEJAIL_PIP_OPTIONS}" /src/deploy/provision.sh \
    && rm -rf /var/lib/apt/lists/*

# MALLOC_ARENA_MAX: see deploy/serve.sh (worker memory drift under load).
ENV DJANGO_SETTINGS_MODULE=codejail_service.settings.production \
    MALLOC_ARENA_MAX=2 \
    CODEJAIL_SERVICE_CFG=/etc/codejail-service/config.yml \
    CODEJAIL_SERVICE_BIND=0.0.0.0:8550 \
    PATH=/opt/codejail-service/venv/bin:${PATH}

# Not a secret: a marker the live API suite looks for in the sandbox's
# environment, where it must never appear (sudo gives the sandbox a clean one).
ENV CODEJAIL_ENV_CANARY=codejail-env-canary-7d1f3c

# The app user, by number so Kubernetes' runAsNonRoot can check it.
USER ${APP_UID}:${APP_UID}
EXPOSE 8550

# 200 only once the startup safety checks have passed (503 before, and if any failed).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/codejail-service/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8550/health/', timeout=4)"]

CMD ["gunicorn", "-c", "python:codejail_service.gunicorn_config", "codejail_service.wsgi:application"]
