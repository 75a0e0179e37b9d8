"""
The configuration table (codejail_service/configuration.py) against every place that repeats
one of its names or defaults: each must say what the table says.
"""

import ast
import importlib
import multiprocessing
import re
import sys
from pathlib import Path

import pytest
import yaml

from codejail_service import configuration
from codejail_service.configuration import (
    CONFINEMENT_JSON,
    DJANGO,
    DOCKERFILE,
    PROCESS_ENV,
    PROVISION,
    TABLE,
    TUTOR,
)
from codejail_service.confinement import DEFAULTS as CONFINEMENT_DEFAULTS
from codejail_service.settings import base

ROOT = Path(__file__).resolve().parents[2]
TUTOR_PLUGIN = ROOT / "deploy" / "tutor-contrib-codejail-service" / "tutorcodejail_service" / "plugin.py"


def _as(entry, text):
    """A default as a shell or Dockerfile writes it (text), as the table's type."""
    text = text.strip('"')
    if entry.type == "bool":
        return {"1": True, "true": True, "0": False, "false": False, "": False}[text]
    if entry.type in ("int", "float"):
        return float(text) if "." in text else int(text)
    if entry.type == "list":
        return text.split()
    return text


def _expected(entry, reader):
    value = entry.value_for(reader)
    if entry.type == "list" and isinstance(value, str):
        return value.split()
    return value


def test_every_name_is_declared_once_with_known_readers():
    assert len({entry.name for entry in TABLE}) == len(TABLE)
    known = {DJANGO, PROCESS_ENV, PROVISION, CONFINEMENT_JSON, DOCKERFILE, TUTOR}
    for entry in TABLE:
        assert entry.readers and set(entry.readers) <= known, entry.name
        assert set(entry.aliases) <= set(entry.readers) and set(entry.overrides) <= set(entry.readers), entry.name
    for reader in known:
        names = [entry.name_for(reader) for entry in TABLE if reader in entry.readers]
        assert len(names) == len(set(names)), reader


def test_django_settings_defaults_are_the_tables():
    for name, entry in configuration.read_by(DJANGO).items():
        assert getattr(base, name) == entry.default, name


def test_every_annotated_setting_is_in_the_table():
    annotated = re.findall(r"^# \.\. setting_name: (\w+)$", Path(base.__file__).read_text(), re.MULTILINE)
    assert set(annotated) <= set(configuration.read_by(DJANGO))


@pytest.fixture
def gunicorn_config(monkeypatch):
    for name in configuration.read_by(PROCESS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "codejail_service.gunicorn_config", raising=False)
    return importlib.import_module("codejail_service.gunicorn_config")


def test_gunicorns_defaults_are_the_tables(gunicorn_config):
    assert gunicorn_config.bind == configuration.default("CODEJAIL_SERVICE_BIND")
    assert gunicorn_config.threads == configuration.default("CODEJAIL_SERVICE_THREADS")
    assert gunicorn_config.timeout == configuration.default("CODEJAIL_SERVICE_TIMEOUT")
    assert gunicorn_config.receive_timeout == configuration.default("CODEJAIL_SERVICE_RECEIVE_TIMEOUT")
    assert gunicorn_config.loglevel == configuration.default("CODEJAIL_SERVICE_LOG_LEVEL")
    assert configuration.default("CODEJAIL_SERVICE_WORKERS") is None  # unset: by the CPU count
    assert gunicorn_config.workers == 2 * multiprocessing.cpu_count()


def test_provisionings_variables_and_defaults_are_the_tables():
    text = (ROOT / "deploy" / "provision.sh").read_text()
    read = set(re.findall(r"\$\{(CODEJAIL_\w+)", text))
    assert read == set(configuration.read_by(PROVISION))
    defaults = dict(re.findall(r"\$\{(CODEJAIL_\w+):-([^}]*)\}", text))
    for name, entry in configuration.read_by(PROVISION).items():
        assert name in defaults, f"provision.sh reads {name} without a default"
        assert _as(entry, defaults[name]) == _expected(entry, PROVISION), name


def test_dockerfile_build_arguments_and_defaults_are_the_tables():
    args = dict(re.findall(r"^ARG (\w+)=(.*)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    assert set(args) == set(configuration.read_by(DOCKERFILE))
    for name, entry in configuration.read_by(DOCKERFILE).items():
        assert _as(entry, args[name]) == _expected(entry, DOCKERFILE), name


def _tutor_defaults():
    tree = ast.parse(TUTOR_PLUGIN.read_text())
    node = next(node.value for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DEFAULTS")
    found = {}
    for key, value in zip(node.keys, node.values, strict=True):
        try:
            found[ast.literal_eval(key)] = ast.literal_eval(value)
        except ValueError:  # a name (the plugin's version): not an operator's default
            pass
    return found


# The Tutor plugin's own settings: its image, the LMS side, Kubernetes; none is the service's.
TUTOR_ONLY = {"VERSION", "DOCKER_IMAGE", "SOURCE_URL", "HOST", "CONNECT_TIMEOUT", "READ_TIMEOUT",
              "APPARMOR_PROFILE", "K8S_REPLICAS"}


def test_tutor_settings_and_defaults_are_the_tables():
    defaults = _tutor_defaults()
    assert set(defaults) - TUTOR_ONLY == set(configuration.read_by(TUTOR))
    for name, entry in configuration.read_by(TUTOR).items():
        assert defaults[name] == _expected(entry, TUTOR), name
    assert defaults["LIMITS"] == configuration.default("CODE_JAIL")["limits"]


def test_the_confinement_layers_defaults_are_the_tables():
    assert set(CONFINEMENT_DEFAULTS) == set(configuration.read_by(CONFINEMENT_JSON))
    for name, entry in configuration.read_by(CONFINEMENT_JSON).items():
        assert CONFINEMENT_DEFAULTS[name] == entry.value_for(CONFINEMENT_JSON), name


def test_the_kubernetes_config_uses_the_tables_pool_and_limits():
    config = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "config.yml").read_text())
    assert config["CODEJAIL_SANDBOX_POOL_SIZE"] == configuration.default("CODEJAIL_SANDBOX_POOL_SIZE")
    assert config["CODE_JAIL"] == configuration.default("CODE_JAIL")
    assert config["CODEJAIL_RUN_DIR_MAX_BYTES"] == configuration.default("CODEJAIL_RUN_DIR_MIB") * configuration.MIB
