"""
What a checkout must not carry: a development machine's own paths in files operators install
from, and unit tests that need programs only provisioning installs.
"""
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# pip options that name a package source: on another machine a local one does not exist, and a
# remote one is the operator's choice (pip.conf, PIP_INDEX_URL), not the repository's.
SOURCE_OPTION = re.compile(r"^\s*(-i|--index-url|--extra-index-url|-f|--find-links|--trusted-host)\b")
LOCAL_PATH = re.compile(r"(file:|(^|\s)/(opt|root|home|tmp|srv|work)/)")


def requirement_files():
    """What pip reads: every .in and .txt file under requirements/ (sets, pins, constraints)."""
    return sorted(path for path in (REPO / "requirements").rglob("*") if path.suffix in (".in", ".txt"))


@pytest.mark.parametrize("path", requirement_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_requirement_files_name_no_package_source_or_local_path(path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        assert not SOURCE_OPTION.search(line), f"{path.name}:{number}: {line}"
        assert not LOCAL_PATH.search(line), f"{path.name}:{number}: {line}"


def test_the_hygiene_patterns_catch_what_they_are_for():
    """The twin of the test above: the patterns flag a local index, and pass a plain pin."""
    assert SOURCE_OPTION.search("--extra-index-url file:///opt/pypi/simple")
    assert SOURCE_OPTION.search("--find-links /opt/wheels")
    assert LOCAL_PATH.search("somepkg @ file:///root/wheels/somepkg-1.0.whl")
    assert not SOURCE_OPTION.search("numpy==1.26.4")
    assert not LOCAL_PATH.search("lxml[html-clean]==5.3.2")


def test_a_unit_test_cannot_start_sudo():
    """conftest's guard: sudo is the live suite's; a fresh machine has none until provisioning."""
    with pytest.raises(AssertionError, match="a unit test ran 'sudo'"):
        subprocess.run(["sudo", "-n", "true"], check=False)


def test_a_unit_test_can_start_an_ordinary_program():
    assert subprocess.run(["/bin/echo", "ok"], capture_output=True, check=True).stdout == b"ok\n"


# The AppArmor VM's lists of live tests it leaves out or expects to fail: a name that no live test
# has is found only 13 minutes into `make test` (tests/apparmor_vm/audit_timeline.py); here, at once.
VM_LISTS = [REPO / "tests" / "apparmor_vm" / name for name in ("deselected-in-vm.txt", "not-covered-by-apparmor.txt")]


def listed_tests(path):
    """The test names a VM list names (a parametrized one by its plain name)."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line.split()[0].split("[", 1)[0])
    return names


def live_test_names():
    """Every test function the live suite defines (tests/live/*.py)."""
    import ast

    names = set()
    for module in (REPO / "tests" / "live").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.add(node.name)
    return names


@pytest.mark.parametrize("path", VM_LISTS, ids=lambda p: p.name)
def test_the_vm_lists_name_only_live_tests_that_exist(path):
    assert set(listed_tests(path)) - live_test_names() == set()


def test_the_vm_list_check_finds_a_stale_name(tmp_path):
    """Its twin: a name no live test has is caught; a parametrized one by its plain name is not."""
    stale = tmp_path / "list.txt"
    stale.write_text("# a comment\ntest_no_such_live_test why\ntest_deny_namespaces[clone-268435456] why\n")
    assert set(listed_tests(stale)) - live_test_names() == {"test_no_such_live_test"}
