"""
What the sandbox runs course code with: its Python and its packages' versions, read from the sandbox
venv itself (``CODE_JAIL["python_bin"]``'s venv), so that a darklaunch mismatch with an LMS can be
traced to a version. Logged at startup (codejail_service/wsgi.py), shown on ``/health/`` and by
``manage.py sandbox_versions``.

- ``python``: the venv's ``pyvenv.cfg`` ``version`` (the interpreter it was made from);
- ``package_set``: the set provisioning installed (``.requirements-set``, written by
  deploy/provision.sh: a name of requirements/sandbox/sets.txt, or the operator's file), or null;
- ``packages``: ``{name: version}`` of every distribution in the venv's site-packages.

Read from files only (no sandbox interpreter started), once per process.
"""
import functools
import glob
import logging
import os
from importlib import metadata

from django.conf import settings

log = logging.getLogger(__name__)


def sandbox_venv():
    """The sandbox venv's directory: where ``CODE_JAIL["python_bin"]`` (``<venv>/bin/python``) lives."""
    return os.path.dirname(os.path.dirname(settings.CODE_JAIL["python_bin"]))


def read_versions(venv):
    """``{"venv", "python", "package_set", "packages"}`` of the venv at ``venv``; raises OSError if unreadable."""
    python = None
    with open(os.path.join(venv, "pyvenv.cfg"), encoding="utf-8") as config:
        for line in config:
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                python = value.strip()
    try:
        with open(os.path.join(venv, ".requirements-set"), encoding="utf-8") as chosen:
            package_set = chosen.read().strip() or None
    except FileNotFoundError:
        package_set = None
    site_packages = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
    packages = {dist.metadata["Name"]: dist.version for dist in metadata.distributions(path=site_packages)
                if dist.metadata["Name"]}
    return {"venv": venv, "python": python, "package_set": package_set,
            "packages": dict(sorted(packages.items(), key=lambda item: item[0].lower()))}


@functools.cache
def sandbox_versions():
    """The configured sandbox venv's versions, or ``{"venv", "error"}`` if it cannot be read."""
    venv = sandbox_venv()
    try:
        return read_versions(venv)
    except OSError as exc:
        return {"venv": venv, "error": f"cannot read the sandbox venv: {exc}"}


def log_versions():
    """Say at startup what the sandbox runs code with."""
    versions = sandbox_versions()
    if "error" in versions:
        log.error("Sandbox venv %s: %s", versions["venv"], versions["error"])
        return
    log.info("Sandbox venv %s: Python %s, package set %s: %s", versions["venv"], versions["python"],
             versions["package_set"], " ".join(f"{name}=={version}" for name, version in versions["packages"].items()))
