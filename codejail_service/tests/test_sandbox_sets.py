"""The sandbox package sets (requirements/sandbox/sets.txt) and their choice (deploy/sandbox_sets.py)."""
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("sandbox_sets", os.path.join(REPO, "deploy", "sandbox_sets.py"))
sandbox_sets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sandbox_sets)

SETS = sandbox_sets.read_sets()


def test_every_set_names_files_that_exist():
    assert [entry["name"] for entry in SETS] == ["current", "current-py311", "teak"]
    for entry in SETS:
        assert os.path.isfile(entry["pins"]) and os.path.isfile(entry["platform"]), entry


def test_the_default_is_the_newest_set_for_the_sandboxs_python():
    by_name = {entry["name"]: entry["pins"] for entry in SETS}
    assert sandbox_sets.resolve("", "3.11") == by_name["current-py311"]
    assert sandbox_sets.resolve("", "3.12") == by_name["current"]


def test_a_named_set_is_taken_on_its_python():
    assert sandbox_sets.set_name(sandbox_sets.resolve("teak", "3.11")) == "teak"


def test_a_set_for_another_python_is_refused():
    with pytest.raises(sandbox_sets.SetError, match="current is for Python 3.12"):
        sandbox_sets.resolve("current", "3.11")


def test_a_python_without_a_set_is_refused():
    with pytest.raises(sandbox_sets.SetError, match="no sandbox package set for Python 3.13"):
        sandbox_sets.resolve("", "3.13")


def test_an_operators_file_is_taken_relative_to_the_checkout_or_absolute(tmp_path):
    own = tmp_path / "mine.txt"
    own.write_text("six==1.17.0\n")
    assert sandbox_sets.resolve(str(own), "3.11") == str(own)
    assert sandbox_sets.set_name(str(own)) == str(own)
    relative = sandbox_sets.resolve("tests/apparmor_vm/sandbox-requirements.txt", "3.11")
    assert relative == os.path.join(REPO, "tests", "apparmor_vm", "sandbox-requirements.txt")


def test_a_choice_that_is_neither_set_nor_file_is_refused():
    with pytest.raises(sandbox_sets.SetError, match="neither a sandbox package set"):
        sandbox_sets.resolve("no-such-set", "3.11")


def test_the_sets_follow_the_platforms_pins_but_for_what_does_not_install_on_their_python():
    differences = {entry["name"]: sandbox_sets.differences(entry) for entry in SETS}
    assert differences == {"current": [], "teak": [],
                           "current-py311": ["  openedx-calc: platform 5.0.0, current-py311 4.0.3"]}
    assert sandbox_sets.pins(SETS[0]["pins"])["numpy"] == "1.26.4"
    assert sandbox_sets.pins(SETS[0]["pins"])["lxml"] == "5.3.2"  # with its extra, html-clean


def test_the_command_line(capsys):
    assert sandbox_sets.main(["resolve", "", "3.11"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "current-py311"
    assert sandbox_sets.main(["diff"]) == 0
    assert "openedx-calc: platform 5.0.0, current-py311 4.0.3" in capsys.readouterr().out
    assert sandbox_sets.main(["resolve", "current", "3.11"]) == 1
    assert "is for Python 3.12" in capsys.readouterr().err
    assert sandbox_sets.main([]) == 2
