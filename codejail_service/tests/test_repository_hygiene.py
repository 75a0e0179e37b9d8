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
