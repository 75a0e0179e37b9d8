"""
pytest plugin for the AppArmor VM run (``-p audit_timeline``).

Records when each test starts and ends (wall clock, the clock the kernel stamps
its audit records with) in the JSON-lines file named by ``AUDIT_TIMELINE``, and
writes the same marks into the kernel log, so ``audit_report.py`` can say which
AppArmor denial came from which test.

It also checks, once the suite's ``service`` fixture has started the service,
that every process of the app user runs under the ``openedx_codejail_service``
profile in enforce mode: a run where the profile did not attach would prove
nothing.

Tests that only our Landlock/seccomp layer can stop are listed in
``not-covered-by-apparmor.txt``; they run as strict xfails: if one starts
passing under AppArmor alone, the run fails until the list is corrected.
"""
import json
import os
import pathlib
import time

import pytest

APP_PROFILE = "openedx_codejail_service (enforce)"
APP_USER = "codejail-app"

NOT_COVERED = pathlib.Path(__file__).with_name("not-covered-by-apparmor.txt")
DESELECTED = pathlib.Path(__file__).with_name("deselected-in-vm.txt")
_starts = {}
_outcomes = {}


def _listed(path):
    """test name -> reason, from one of the list files beside this plugin."""
    entries = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, reason = line.partition(" ")
            entries[name] = reason.strip()
    return entries


def _kmsg(text):
    try:
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(f"codejail-vm: {text}\n")
    except OSError:
        pass  # not root, or no /dev/kmsg: the timeline file still has it


def _record(entry):
    path = os.environ.get("AUDIT_TIMELINE")
    if path:
        with open(path, "a") as timeline:
            timeline.write(json.dumps(entry) + "\n")


@pytest.hookimpl(tryfirst=True)  # before -k narrows the items
def pytest_collection_modifyitems(config, items):
    not_covered, deselected = _listed(NOT_COVERED), _listed(DESELECTED)
    unknown = (set(not_covered) | set(deselected)) - {i.name for i in items} - {i.originalname for i in items}
    # A renamed or removed test must not leave a stale entry (checked on full runs).
    if unknown and os.environ.get("AUDIT_TIMELINE_CHECK_LISTS") == "1":
        raise pytest.UsageError(f"listed in {NOT_COVERED.name}/{DESELECTED.name} but not collected: {sorted(unknown)}")
    kept, dropped = [], []
    for item in items:
        if item.name in deselected or item.originalname in deselected:
            dropped.append(item)
            continue
        kept.append(item)
        reason = not_covered.get(item.name) or not_covered.get(item.originalname)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=f"not AppArmor's to stop: {reason}", strict=True))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_runtest_logstart(nodeid, location):
    _kmsg(f"begin {nodeid}")
    _starts[nodeid] = time.time()


def pytest_runtest_logreport(report):
    # The outcome that counts: the call's, or a setup/teardown failure.
    if report.when == "call" or report.outcome != "passed":
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        _outcomes.setdefault(report.nodeid, outcome)


def pytest_runtest_logfinish(nodeid, location):
    end = time.time()
    _kmsg(f"end {nodeid}")
    _record({"name": nodeid, "start": _starts.pop(nodeid, end), "end": end,
             "outcome": _outcomes.get(nodeid, "unknown")})


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """Put the service's start (and its startup checks) on the timeline as its own span."""
    if fixturedef.argname != "service":
        yield
        return
    start = time.time()
    _kmsg("begin service start + startup checks")
    outcome = yield
    _kmsg("end service start + startup checks")
    _record({"name": "service start + startup checks (tests/live/conftest.py)", "start": start,
             "end": time.time(), "outcome": "failed" if outcome.excinfo else "passed"})


def app_process_labels():
    """pid -> AppArmor label of every process of the app user."""
    import pwd
    uid = pwd.getpwnam(APP_USER).pw_uid
    labels = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/attr/current") as attr:
                labels[int(entry)] = attr.read().strip()
        except OSError:
            continue  # gone meanwhile
    return labels


@pytest.fixture(scope="session", autouse=True)
def _service_runs_under_the_profile(service):
    labels = app_process_labels()
    print(f"\napp processes and their AppArmor labels: {labels}")
    assert labels, f"no process of {APP_USER} found: is the service running?"
    wrong = {pid: label for pid, label in labels.items() if label != APP_PROFILE}
    assert not wrong, f"app processes not under {APP_PROFILE!r}: {wrong}"
