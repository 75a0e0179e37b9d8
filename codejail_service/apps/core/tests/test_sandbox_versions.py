"""The sandbox's versions, read from its venv: /health/, the startup log, manage.py sandbox_versions."""
import json
import logging

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from codejail_service.apps.core import sandbox_versions


def make_venv(root, package_set="current-py311"):
    """A sandbox venv as provisioning leaves it: pyvenv.cfg, the set's name, two distributions."""
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n")
    if package_set is not None:
        (root / ".requirements-set").write_text(package_set + "\n")
    site = root / "lib" / "python3.11" / "site-packages"
    for name, version in (("numpy", "1.26.4"), ("openedx-calc", "4.0.3")):
        dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


@pytest.fixture
def venv(tmp_path, settings):
    root = make_venv(tmp_path / "sandbox-venv")
    settings.CODE_JAIL = {**settings.CODE_JAIL, "python_bin": str(root / "bin" / "python")}
    sandbox_versions.sandbox_versions.cache_clear()
    yield root
    sandbox_versions.sandbox_versions.cache_clear()


def test_the_versions_are_read_from_the_sandbox_venv(venv):
    assert sandbox_versions.sandbox_versions() == {
        "venv": str(venv), "python": "3.11.2", "package_set": "current-py311",
        "packages": {"numpy": "1.26.4", "openedx-calc": "4.0.3"}}


def test_a_venv_provisioned_without_a_set_name_says_null(tmp_path):
    assert sandbox_versions.read_versions(str(make_venv(tmp_path / "v", package_set=None)))["package_set"] is None


def test_an_unreadable_venv_is_reported_not_raised(tmp_path, settings):
    settings.CODE_JAIL = {**settings.CODE_JAIL, "python_bin": str(tmp_path / "missing" / "bin" / "python")}
    sandbox_versions.sandbox_versions.cache_clear()
    try:
        report = sandbox_versions.sandbox_versions()
    finally:
        sandbox_versions.sandbox_versions.cache_clear()
    assert report["venv"] == str(tmp_path / "missing") and "cannot read the sandbox venv" in report["error"]


def test_health_shows_the_sandbox_versions(venv):
    body = json.loads(Client().get("/health/").content)
    assert body["sandbox"]["packages"]["numpy"] == "1.26.4" and body["sandbox"]["python"] == "3.11.2"


def test_startup_logs_the_versions(venv, caplog):
    with caplog.at_level(logging.INFO, logger=sandbox_versions.__name__):
        sandbox_versions.log_versions()
    assert "Python 3.11.2, package set current-py311: numpy==1.26.4 openedx-calc==4.0.3" in caplog.text


def test_startup_logs_an_unreadable_venv_as_an_error(tmp_path, settings, caplog):
    settings.CODE_JAIL = {**settings.CODE_JAIL, "python_bin": str(tmp_path / "missing" / "bin" / "python")}
    sandbox_versions.sandbox_versions.cache_clear()
    with caplog.at_level(logging.INFO, logger=sandbox_versions.__name__):
        sandbox_versions.log_versions()
    sandbox_versions.sandbox_versions.cache_clear()
    assert any(record.levelno == logging.ERROR and "cannot read" in record.getMessage() for record in caplog.records)


def test_the_command_prints_the_versions(venv, capsys):
    call_command("sandbox_versions")
    assert json.loads(capsys.readouterr().out)["packages"] == {"numpy": "1.26.4", "openedx-calc": "4.0.3"}


def test_the_command_fails_on_an_unreadable_venv(tmp_path, settings):
    settings.CODE_JAIL = {**settings.CODE_JAIL, "python_bin": str(tmp_path / "missing" / "bin" / "python")}
    with pytest.raises(CommandError, match="cannot read the sandbox venv"):
        call_command("sandbox_versions")
