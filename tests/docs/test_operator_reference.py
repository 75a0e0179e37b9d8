"""
The operator reference's annotation reader (docs/_ext/operator_reference.py): finds what is
annotated, and reports what is incomplete or duplicated, so `make docs` (-W) fails on it.
"""
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import operator_reference  # noqa: E402

ATTRIBUTE = ".. custom_attribute_name:"
TOGGLE = ".. toggle_name:"


@pytest.fixture
def package(tmp_path):
    """A package folder; write(name, text) adds a module to it."""
    folder = tmp_path / "pkg"
    folder.mkdir()

    def write(name, text):
        (folder / name).write_text(textwrap.dedent(text))
        return folder

    return write


def test_finds_complete_custom_attributes(package):
    source = package("views.py", """\
        # .. custom_attribute_name: svc.status
        # .. custom_attribute_description: The outcome,
        #   on two lines.
        set_custom_attribute("svc.status", "ok")
        """)
    found, errors = operator_reference.find_annotation_groups(
        str(source), operator_reference.CUSTOM_ATTRIBUTE_CONFIG_PATH, ATTRIBUTE)
    assert errors == []
    assert list(found) == ["svc.status"]
    assert found["svc.status"]["filename"] == "pkg/views.py"
    assert found["svc.status"]["line_number"] == 1
    assert operator_reference._text(found["svc.status"][".. custom_attribute_description:"]) == \
        "The outcome, on two lines."


def test_reports_a_custom_attribute_without_description(package):
    source = package("views.py", """\
        # .. custom_attribute_name: svc.status
        set_custom_attribute("svc.status", "ok")
        """)
    _, errors = operator_reference.find_annotation_groups(
        str(source), operator_reference.CUSTOM_ATTRIBUTE_CONFIG_PATH, ATTRIBUTE)
    assert any("custom_attribute_description" in error for error in errors), errors


def test_reports_a_name_annotated_twice(package):
    text = """\
        # .. custom_attribute_name: svc.status
        # .. custom_attribute_description: The outcome.
        x = 1
        """
    package("a.py", text)
    source = package("b.py", text)
    found, errors = operator_reference.find_annotation_groups(
        str(source), operator_reference.CUSTOM_ATTRIBUTE_CONFIG_PATH, ATTRIBUTE)
    assert list(found) == ["svc.status"]
    assert any("annotated twice" in error for error in errors), errors


def test_finds_a_complete_toggle(package):
    source = package("toggles.py", """\
        # .. toggle_name: FEATURE
        # .. toggle_implementation: SettingToggle
        # .. toggle_default: False
        # .. toggle_description: Turns it on.
        # .. toggle_use_cases: open_edx
        # .. toggle_creation_date: 2026-11-26
        FEATURE = SettingToggle("FEATURE", default=False)
        """)
    found, errors = operator_reference.find_annotation_groups(
        str(source), operator_reference.FEATURE_TOGGLE_ANNOTATIONS_CONFIG_PATH, TOGGLE)
    assert errors == []
    assert operator_reference._text(found["FEATURE"][".. toggle_implementation:"]) == "SettingToggle"


def test_reports_a_toggle_with_an_unknown_implementation(package):
    source = package("toggles.py", """\
        # .. toggle_name: FEATURE
        # .. toggle_implementation: MagicToggle
        # .. toggle_default: False
        # .. toggle_description: Turns it on.
        # .. toggle_use_cases: open_edx
        # .. toggle_creation_date: 2026-11-26
        FEATURE = 1
        """)
    _, errors = operator_reference.find_annotation_groups(
        str(source), operator_reference.FEATURE_TOGGLE_ANNOTATIONS_CONFIG_PATH, TOGGLE)
    assert any("MagicToggle" in error for error in errors), errors


def test_the_service_code_has_complete_annotations():
    # What `make docs` renders: every kind present, none incomplete.
    source = str(ROOT / "codejail_service")
    for config, token in ((operator_reference.FEATURE_TOGGLE_ANNOTATIONS_CONFIG_PATH, TOGGLE),
                          (operator_reference.SETTING_ANNOTATIONS_CONFIG_PATH, ".. setting_name:"),
                          (operator_reference.CUSTOM_ATTRIBUTE_CONFIG_PATH, ATTRIBUTE)):
        found, errors = operator_reference.find_annotation_groups(source, config, token)
        assert errors == [] and found, (token, errors)
    toggles, _ = operator_reference.find_annotation_groups(
        source, operator_reference.FEATURE_TOGGLE_ANNOTATIONS_CONFIG_PATH, TOGGLE)
    assert "CODEJAIL_ENABLED" in toggles


def test_the_configuration_table_loads_without_the_app():
    table = operator_reference.load_configuration_table(str(ROOT / "codejail_service" / "configuration.py")).TABLE
    assert "CODEJAIL_SANDBOX_POOL_SIZE" in [entry.name for entry in table]
