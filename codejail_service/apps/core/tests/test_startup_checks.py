"""Tests of the startup safety checks: their pass/fail logic, the probes, the cache."""

import errno
import os
import socket
import subprocess
from unittest import mock

import pytest
from codejail.safe_exec import SafeExecException

from codejail_service.apps.core import startup_checks
from codejail_service.apps.core.startup_checks import (
    CONFINEMENT_LAYERS_PROBE,
    DISK_ESCAPE_PROBE,
    NETWORK_SOCKET_PROBE,
    PROCESS_EXEC_PROBE,
    CheckResult,
    check_basic_execution,
    check_confinement_layers,
    check_disk_escape,
    check_network_socket,
    check_process_exec,
    check_webapp_egress,
    get_startup_check_results,
    run_startup_checks,
    startup_check,
    startup_checks_passed,
)
from codejail_service.sandbox.pool import Slot
from codejail_service.sandbox.run import FRESH, WARM, Run

SAFE_EXEC = "codejail_service.apps.core.execution.safe_exec"
# A fresh run for the checks that take one (safe_exec is mocked: nothing runs in it).
RUN = Run(Slot(None, "codejail-sandbox", None), FRESH)


def sandbox_reports(**globals_after):
    """A mocked safe_exec whose sandboxed code ended with these globals."""

    def ran(code, globals_dict, **kwargs):
        globals_dict.update(globals_after)

    return mock.patch(SAFE_EXEC, side_effect=ran)


def sandbox_fails(message="Couldn't execute jailed code: stdout: b'', stderr: b'x' with status code: 1"):
    return mock.patch(SAFE_EXEC, side_effect=SafeExecException(message))


# --- basic_execution --------------------------------------------------------------------------


def test_basic_execution_passes_when_x_becomes_17():
    seen = []

    def ran(code, globals_dict, **kwargs):
        seen.append((code, dict(globals_dict)))
        globals_dict["x"] = 17

    with mock.patch(SAFE_EXEC, side_effect=ran):
        assert check_basic_execution(RUN) == CheckResult.ok()
    assert seen == [("x = x + 1", {"x": 16})]


def test_basic_execution_fails_on_wrong_result():
    with sandbox_reports(x=16):
        result = check_basic_execution(RUN)
    assert not result.passed
    assert "got 16" in result.reason


def test_basic_execution_fails_when_the_sandbox_fails():
    with sandbox_fails("Couldn't execute jailed code: stdout: b'', stderr: b'sudo: a password is required'"):
        result = check_basic_execution(RUN)
    assert not result.passed
    assert "sudo: a password is required" in result.reason


# --- the sandbox denial checks ------------------------------------------------------------------

DENIAL_CHECKS = [
    (check_disk_escape, "list /"),
    (check_process_exec, "start /usr/bin/true"),
    (check_network_socket, "create an AF_INET socket"),
]


@pytest.mark.parametrize("check, what", DENIAL_CHECKS)
def test_denial_check_passes_when_the_probe_was_denied(check, what):
    with sandbox_reports(outcome="denied"):
        assert check(RUN) == CheckResult.ok()


@pytest.mark.parametrize("check, what", DENIAL_CHECKS)
def test_denial_check_fails_when_the_probe_was_allowed(check, what):
    with sandbox_reports(outcome="allowed"):
        result = check(RUN)
    assert not result.passed
    assert result.reason == f"sandboxed code was able to {what}"


@pytest.mark.parametrize("check, what", DENIAL_CHECKS)
def test_denial_check_fails_on_an_unexpected_outcome(check, what):
    with sandbox_reports(outcome="unexpected: FileNotFoundError(2, 'No such file')"):
        result = check(RUN)
    assert not result.passed
    assert "FileNotFoundError" in result.reason


@pytest.mark.parametrize("check, what", DENIAL_CHECKS)
def test_denial_check_fails_when_the_probe_did_not_complete(check, what):
    """A broken sandbox (or a probe that crashed) must never count as 'denied'."""
    with sandbox_fails():
        result = check(RUN)
    assert not result.passed
    assert result.reason.startswith("probe did not run to completion: Couldn't execute jailed code")


@pytest.mark.parametrize("check, what", DENIAL_CHECKS)
def test_denial_check_fails_when_the_probe_reported_nothing(check, what):
    with sandbox_reports():
        result = check(RUN)
    assert not result.passed
    assert result.reason == "probe finished without reporting an outcome"


def run_probe(code):
    """Run a probe in this (unconfined) process, as the sandbox would, and return its outcome."""
    scope = {}
    exec(code, scope)  # our own probe code
    return scope["outcome"]


# Allow twins: unconfined, each probe runs and sees its action succeed.
@pytest.mark.parametrize("probe", [DISK_ESCAPE_PROBE, PROCESS_EXEC_PROBE, NETWORK_SOCKET_PROBE])
def test_probe_reports_allowed_where_nothing_confines_it(probe):
    assert run_probe(probe) == "allowed"


def test_disk_escape_probe_reports_denied_on_permission_error(monkeypatch):
    monkeypatch.setattr("os.listdir", mock.Mock(side_effect=PermissionError(errno.EACCES, "Permission denied")))
    assert run_probe(DISK_ESCAPE_PROBE) == "denied"


def test_disk_escape_probe_names_other_errors(monkeypatch):
    monkeypatch.setattr("os.listdir", mock.Mock(side_effect=FileNotFoundError(errno.ENOENT, "gone")))
    assert run_probe(DISK_ESCAPE_PROBE).startswith("unexpected: FileNotFoundError")


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        PermissionError(errno.EPERM, "Operation not permitted"),
        BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
    ],
)
def test_process_exec_probe_reports_denied_on_eacces_eperm_eagain(monkeypatch, error):
    monkeypatch.setattr(subprocess, "run", mock.Mock(side_effect=error))
    assert run_probe(PROCESS_EXEC_PROBE) == "denied"


@pytest.mark.parametrize("error", [FileNotFoundError(errno.ENOENT, "No such file"), ValueError("odd")])
def test_process_exec_probe_names_other_errors(monkeypatch, error):
    monkeypatch.setattr(subprocess, "run", mock.Mock(side_effect=error))
    assert run_probe(PROCESS_EXEC_PROBE).startswith("unexpected: ")


def test_network_socket_probe_reports_denied_on_permission_error(monkeypatch):
    monkeypatch.setattr(socket, "socket", mock.Mock(side_effect=PermissionError(errno.EACCES, "Permission denied")))
    assert run_probe(NETWORK_SOCKET_PROBE) == "denied"


def test_network_socket_probe_names_other_errors(monkeypatch):
    monkeypatch.setattr(socket, "socket", mock.Mock(side_effect=OSError(errno.EAFNOSUPPORT, "no inet")))
    assert run_probe(NETWORK_SOCKET_PROBE).startswith("unexpected: ")


# --- webapp_egress (the socket is mocked: tests send no traffic) -------------------------------

CONNECT = "codejail_service.apps.core.startup_checks.socket.create_connection"


@pytest.fixture
def egress_target(settings):
    settings.CODEJAIL_EGRESS_CHECK = {"host": "192.0.2.10", "port": 443, "timeout": 1.5}


def test_egress_check_uses_the_configured_target_and_timeout(egress_target):
    with mock.patch(CONNECT, side_effect=TimeoutError()) as connect:
        check_webapp_egress()
    connect.assert_called_once_with(("192.0.2.10", 443), timeout=1.5)


def test_egress_check_passes_on_timeout(egress_target):
    with mock.patch(CONNECT, side_effect=TimeoutError()):
        result = check_webapp_egress()
    assert result.passed
    assert result.details == {"target": "192.0.2.10:443", "blocked_by": "no answer within 1.5 s"}


@pytest.mark.parametrize("code", [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPERM, errno.EACCES])
def test_egress_check_passes_when_blocked(egress_target, code):
    with mock.patch(CONNECT, side_effect=OSError(code, "blocked")):
        result = check_webapp_egress()
    assert result.passed
    assert result.details["blocked_by"] == errno.errorcode[code]


def test_egress_check_fails_when_the_connection_succeeds(egress_target):
    with mock.patch(CONNECT) as connect:
        result = check_webapp_egress()
    assert not result.passed
    assert result.reason == "connected to 192.0.2.10:443: the web app can reach the network"
    connect.return_value.__exit__.assert_called_once()  # the socket was closed


def test_egress_check_fails_when_the_target_refuses(egress_target):
    """ECONNREFUSED means a RST came back: packets reach the outside."""
    with mock.patch(CONNECT, side_effect=ConnectionRefusedError(errno.ECONNREFUSED, "refused")):
        result = check_webapp_egress()
    assert not result.passed
    assert "refused by the target: egress is open" in result.reason


def test_egress_check_fails_on_other_errors(egress_target):
    with mock.patch(CONNECT, side_effect=OSError(errno.EADDRNOTAVAIL, "odd")):
        result = check_webapp_egress()
    assert not result.passed
    assert "failed unexpectedly" in result.reason


def test_egress_check_against_loopback_fails_for_real():
    """Unmocked, with the test settings' loopback target: nothing blocks loopback, so FAIL."""
    result = check_webapp_egress()
    assert not result.passed
    assert result.details == {"target": "127.0.0.1:9"}


# --- confinement_layers ---------------------------------------------------------------------------

LAYERS = ["landlock.fs", "landlock.net", "landlock.scope", "seccomp", "reaper"]


BOUND = {"kind": "watchdog", "bytes": 1 << 30}
CPU_BOUND = {"kind": "watchdog", "seconds": 3}


def test_confinement_layers_passes_and_reports_when_enforced(settings):
    settings.CODEJAIL_WARM_SANDBOX = False
    with sandbox_reports(outcome={"mode": "enforce", "layers": LAYERS, "missing": [], "landlock_abi": 7,
                                  "memory_bound": BOUND, "cpu_bound": CPU_BOUND}):
        result = check_confinement_layers(RUN)
    assert result == CheckResult.ok(mode="enforce", layers=LAYERS, missing=[], landlock_abi=7, memory_bound=BOUND,
                                    cpu_bound=CPU_BOUND, warm_sandbox=False)


def test_confinement_layers_fails_when_nothing_bounds_a_runs_memory(settings):
    settings.CODEJAIL_WARM_SANDBOX = False
    with sandbox_reports(outcome={"mode": "enforce", "layers": LAYERS, "missing": [], "landlock_abi": 7,
                                  "memory_bound": None}):
        result = check_confinement_layers(RUN)
    assert not result.passed and "total memory" in result.reason


def test_confinement_layers_passes_unbounded_memory_only_when_the_operator_allows_it(settings):
    settings.CODEJAIL_ALLOW_UNBOUNDED_RUN_MEMORY = True
    with sandbox_reports(outcome={"mode": "off", "layers": [], "missing": [], "landlock_abi": None}):
        result = check_confinement_layers(RUN)
    assert result.passed and result.details["memory_bound"] is None


@pytest.fixture
def warm_sandbox_on(settings, tmp_path):
    """A warm run, in slot 0 of a pool of 2."""
    settings.CODEJAIL_WARM_SANDBOX = True
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 2
    return Run(Slot(0, "codejail-sandbox-0", None), WARM)


def test_confinement_layers_reports_runs_forked_by_the_zygote(warm_sandbox_on):
    outcome = {"mode": "enforce", "layers": LAYERS, "missing": [], "landlock_abi": 7, "forked_by": "zygote",
               "memory_bound": BOUND}
    with sandbox_reports(outcome=outcome):
        result = check_confinement_layers(warm_sandbox_on)
    assert result.passed and result.details["warm_sandbox"] is True


def test_confinement_layers_fails_when_the_warm_sandbox_is_on_but_runs_are_fresh(warm_sandbox_on):
    with sandbox_reports(outcome={"mode": "enforce", "layers": LAYERS, "missing": [], "landlock_abi": 7}):
        result = check_confinement_layers(warm_sandbox_on)
    assert not result.passed and "forked by a fresh interpreter" in result.reason


def test_without_a_pool_the_warm_sandbox_default_means_fresh_interpreters_and_says_so(settings):
    settings.CODEJAIL_WARM_SANDBOX = True
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    with sandbox_reports(outcome={"mode": "enforce", "layers": LAYERS, "missing": [], "landlock_abi": 7,
                                  "memory_bound": BOUND}):
        result = check_confinement_layers(RUN)
    assert result.passed and result.details["warm_sandbox"] is False
    assert "needs a sandbox user pool" in result.details["warm_sandbox_note"]


def test_with_a_pool_and_the_opt_out_the_check_says_nothing_of_the_warm_sandbox(settings):
    settings.CODEJAIL_WARM_SANDBOX = False
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    with sandbox_reports(outcome={"mode": "enforce", "layers": LAYERS, "missing": [], "landlock_abi": 7,
                                  "memory_bound": BOUND}):
        result = check_confinement_layers(RUN)
    assert result.passed and "warm_sandbox_note" not in result.details


def test_confinement_layers_passes_and_says_so_when_switched_off(settings):
    settings.CODEJAIL_ALLOW_UNBOUNDED_RUN_MEMORY = True  # the layer's watchdog is off too
    with sandbox_reports(outcome={"mode": "off", "layers": [], "missing": [], "landlock_abi": None}):
        result = check_confinement_layers(RUN)
    assert result.passed
    assert result.details["mode"] == "off" and "switched off" in result.details["note"]


@pytest.mark.parametrize("mode", ["not-installed", "not-run"])
def test_confinement_layers_fails_when_the_layer_did_not_run(mode):
    with sandbox_reports(outcome={"mode": mode}):
        result = check_confinement_layers(RUN)
    assert not result.passed
    assert repr(mode) in result.reason


def test_confinement_layers_fails_when_the_probe_did_not_complete():
    with sandbox_fails():
        assert not check_confinement_layers(RUN).passed


def test_confinement_layers_probe_reports_not_installed_outside_the_sandbox():
    scope = {}
    exec(CONFINEMENT_LAYERS_PROBE, scope)  # our own probe, run here unconfined
    assert scope["outcome"] == {"mode": "not-installed"}


# --- the registry and the cache -----------------------------------------------------------------


def test_the_seven_checks_are_registered_in_order():
    assert list(startup_checks.STARTUP_CHECKS) == [
        "basic_execution", "disk_escape", "process_exec", "network_socket", "confinement_layers",
        "run_dir_cap", "webapp_egress",
    ]


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        startup_check("basic_execution")(lambda: CheckResult.ok())


@pytest.fixture
def fake_checks(monkeypatch):
    calls = []

    def passing(*run):
        calls.append("passing")
        return CheckResult.ok(layers=["landlock", "seccomp"])

    def failing(*run):
        calls.append("failing")
        return CheckResult.fail("nope")

    def crashing(*run):
        calls.append("crashing")
        raise KeyError("boom")

    monkeypatch.setattr(startup_checks, "STARTUP_CHECKS", {"a": passing, "b": failing, "c": crashing})
    return calls


def test_checks_have_not_run_until_asked():
    assert get_startup_check_results() is None
    assert not startup_checks_passed()


def test_run_startup_checks_runs_each_check_once_and_caches(fake_checks):
    first = run_startup_checks()
    second = run_startup_checks()
    assert fake_checks == ["passing", "failing", "crashing"]
    assert first is second is get_startup_check_results()
    assert first["a"] == CheckResult.ok(layers=["landlock", "seccomp"])
    assert first["b"] == CheckResult.fail("nope")
    assert first["c"] == CheckResult.fail("check raised KeyError('boom')")
    assert not startup_checks_passed()


def test_startup_checks_pass_only_when_all_pass(monkeypatch):
    passing = lambda *run: CheckResult.ok()  # noqa: E731 -- a stand-in check
    monkeypatch.setattr(startup_checks, "STARTUP_CHECKS", {"a": passing, "b": passing})
    run_startup_checks()
    assert startup_checks_passed()


def test_each_check_result_is_recorded_as_a_custom_attribute(fake_checks):
    with mock.patch("codejail_service.apps.core.startup_checks.set_custom_attribute") as set_attribute:
        run_startup_checks()
    assert set_attribute.call_args_list == [
        mock.call("codejail_service.startup_check.a", "pass"),
        mock.call("codejail_service.startup_check.b", "fail: nope"),
        mock.call("codejail_service.startup_check.c", "fail: check raised KeyError('boom')"),
    ]


def test_failures_are_logged(fake_checks, caplog):
    run_startup_checks()
    assert "Startup check b FAILED: nope" in caplog.text
    assert "Startup check c raised" in caplog.text


def test_check_result_as_json_merges_details():
    assert CheckResult.fail("why", seen="x").as_json() == {"seen": "x", "passed": False, "reason": "why"}


# --- run_dir_cap (real tmpfs mounts: the unit tests run as root) ------------------------------


@pytest.fixture
def run_dir_root(settings, tmp_path):
    """CODEJAIL_RUN_DIR_ROOT with a 2-slot pool; slot dirs made (not mounted) and owned by us."""
    root = tmp_path / "runs"
    for index in range(2):
        (root / str(index)).mkdir(parents=True, mode=0o755)
    settings.CODEJAIL_RUN_DIR_ROOT = str(root)
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 2
    settings.CODEJAIL_RUN_DIR_MAX_BYTES = 4 * 1024 * 1024
    mounted = []

    def mount(index, size):
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "cj-test", str(root / str(index))],
                       check=True)
        mounted.append(root / str(index))

    yield root, mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_run_dir_cap_without_a_root_passes_and_says_uncapped(settings):
    settings.CODEJAIL_RUN_DIR_ROOT = None
    assert startup_checks.check_run_dir_cap() == CheckResult.ok(capped=False)


def test_run_dir_cap_passes_when_every_slot_is_a_small_filesystem(run_dir_root):
    root, mount = run_dir_root
    mount(0, "1m")
    mount(1, "2m")
    assert startup_checks.check_run_dir_cap() == CheckResult.ok(capped=True, bytes_per_run=2 * 1024 * 1024)


def test_run_dir_cap_fails_when_a_slot_dir_is_not_a_mount(run_dir_root):
    root, mount = run_dir_root
    mount(0, "1m")
    result = startup_checks.check_run_dir_cap()
    assert not result.passed
    assert result.reason == f"{root}/1 is not a filesystem of its own (mount a size-limited tmpfs there)"


def test_run_dir_cap_fails_when_a_slot_holds_more_than_the_limit(run_dir_root):
    root, mount = run_dir_root
    mount(0, "1m")
    mount(1, "8m")
    result = startup_checks.check_run_dir_cap()
    assert not result.passed and "more than CODEJAIL_RUN_DIR_MAX_BYTES" in result.reason


@pytest.mark.parametrize("problem", ["missing", "writable_by_others", "no_pool"])
def test_run_dir_cap_fails_on_a_misconfigured_slot(run_dir_root, settings, problem):
    root, mount = run_dir_root
    mount(0, "1m")
    mount(1, "1m")
    if problem == "missing":
        settings.CODEJAIL_SANDBOX_POOL_SIZE = 3
    elif problem == "writable_by_others":
        os.chmod(root / "1", 0o777)
    else:
        settings.CODEJAIL_SANDBOX_POOL_SIZE = 0
    result = startup_checks.check_run_dir_cap()
    assert not result.passed, result
