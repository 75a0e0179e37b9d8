"""Settings: production reads YAML named by CODEJAIL_SERVICE_CFG; codejail gets CODE_JAIL."""

import importlib
import sys

import pytest
from codejail import jail_code
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PRODUCTION = "codejail_service.settings.production"
MIB = 1024 * 1024


def load_production(monkeypatch, path):
    """Import the production settings module afresh with CODEJAIL_SERVICE_CFG=path."""
    if path is None:
        monkeypatch.delenv("CODEJAIL_SERVICE_CFG", raising=False)
    else:
        monkeypatch.setenv("CODEJAIL_SERVICE_CFG", str(path))
    monkeypatch.delitem(sys.modules, PRODUCTION, raising=False)
    return importlib.import_module(PRODUCTION)


def write(tmp_path, text):
    path = tmp_path / "config.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_keys_override_settings(monkeypatch, tmp_path):
    config = write(
        tmp_path,
        """
CODEJAIL_ENABLED: true
ALLOWED_HOSTS: [codejail.internal]
CODE_JAIL:
  python_bin: /srv/sandbox/bin/python
  user: sandbox
  limits: {CPU: 2, REALTIME: 3, VMEM: 536870912, FSIZE: 0, NPROC: 4, PROXY: 0}
  limit_overrides:
    course-v1:edX+Big+2026: {REALTIME: 10}
CODEJAIL_EGRESS_CHECK: {host: 10.255.0.2, port: 80, timeout: 1}
""",
    )
    production = load_production(monkeypatch, config)
    assert production.CODEJAIL_ENABLED is True
    assert production.ALLOWED_HOSTS == ["codejail.internal"]
    assert production.CODE_JAIL["python_bin"] == "/srv/sandbox/bin/python"
    assert production.CODE_JAIL["limit_overrides"] == {"course-v1:edX+Big+2026": {"REALTIME": 10}}
    assert production.CODEJAIL_EGRESS_CHECK == {"host": "10.255.0.2", "port": 80, "timeout": 1}


def test_production_defaults_without_overrides(monkeypatch, tmp_path):
    production = load_production(monkeypatch, write(tmp_path, "{}"))
    assert production.CODEJAIL_ENABLED is False
    assert production.CODEJAIL_ENFORCE_STARTUP_CHECKS is True
    assert production.DEBUG is False
    assert production.CODE_JAIL["python_bin"] == "/opt/codejail-service/sandbox-venv/bin/python"
    assert production.CODE_JAIL["user"] == "codejail-sandbox"
    assert production.CODE_JAIL["limits"] == {
        "CPU": 1, "REALTIME": 3, "VMEM": 512 * MIB, "FSIZE": 1 * MIB, "NPROC": 15, "PROXY": 0,
    }
    # A public IP literal: no DNS involved, and only a blocked network makes the connect fail.
    assert production.CODEJAIL_EGRESS_CHECK == {"host": "1.1.1.1", "port": 443, "timeout": 2.0}
    assert production.DATA_UPLOAD_MAX_MEMORY_SIZE == 10 * MIB


def test_empty_yaml_file_keeps_the_defaults(monkeypatch, tmp_path):
    production = load_production(monkeypatch, write(tmp_path, ""))
    assert production.CODEJAIL_MAX_REQUEST_BYTES == 10 * MIB


def test_request_size_override_also_sets_django_parse_limits(monkeypatch, tmp_path):
    production = load_production(monkeypatch, write(tmp_path, "CODEJAIL_MAX_REQUEST_BYTES: 2097152\n"))
    assert production.CODEJAIL_MAX_REQUEST_BYTES == 2 * MIB
    assert production.DATA_UPLOAD_MAX_MEMORY_SIZE == 2 * MIB
    assert production.FILE_UPLOAD_MAX_MEMORY_SIZE == 2 * MIB


def test_missing_environment_variable_is_an_error(monkeypatch):
    with pytest.raises(ImproperlyConfigured, match="Set CODEJAIL_SERVICE_CFG"):
        load_production(monkeypatch, None)


def test_missing_file_is_an_error(monkeypatch, tmp_path):
    with pytest.raises(ImproperlyConfigured, match="Cannot read CODEJAIL_SERVICE_CFG file"):
        load_production(monkeypatch, tmp_path / "absent.yml")


def test_invalid_yaml_is_an_error(monkeypatch, tmp_path):
    with pytest.raises(ImproperlyConfigured, match="is not valid YAML"):
        load_production(monkeypatch, write(tmp_path, "CODE_JAIL: [unclosed\n"))


def test_yaml_that_is_not_a_mapping_is_an_error(monkeypatch, tmp_path):
    with pytest.raises(ImproperlyConfigured, match="must hold a mapping of setting names, not list"):
        load_production(monkeypatch, write(tmp_path, "- CODEJAIL_ENABLED\n"))


def test_test_and_local_settings_never_point_egress_off_this_machine():
    local = importlib.import_module("codejail_service.settings.local")
    assert local.CODEJAIL_EGRESS_CHECK["host"] == "127.0.0.1"
    assert settings.CODEJAIL_EGRESS_CHECK["host"] == "127.0.0.1"
    assert local.DEBUG is False


def test_code_jail_settings_are_applied_to_codejail_when_the_app_is_ready():
    """CoreConfig.ready() ran apply_django_settings(settings.CODE_JAIL) at django.setup()."""
    command = jail_code.COMMANDS["python"]
    assert command["cmdline_start"] == [settings.CODE_JAIL["python_bin"], "-E", "-B"]
    assert command["user"] == settings.CODE_JAIL["user"]
    for name, value in settings.CODE_JAIL["limits"].items():
        assert jail_code.LIMITS[name] == value
