"""The operator's view of the confinement policy: ``manage.py print_confinement_policy``."""
import json
import os
import tempfile

from django.core.management import call_command


def test_prints_the_policy_for_the_configured_sandbox_venv(settings, capsys):
    settings.CODE_JAIL = {**settings.CODE_JAIL, "python_bin": "/srv/sandbox/bin/python"}
    call_command("print_confinement_policy")
    report = json.loads(capsys.readouterr().out)
    assert report["sandbox_prefix"] == "/srv/sandbox"
    assert report["kernel"]["landlock_abi"] >= 1
    paths = [rule["path"] for rule in report["policy"]["landlock"]["fs_rules"]]
    assert paths[0] == "/srv/sandbox" and "/tmp/codejail-XXXXXXXX" in paths
    seccomp = report["policy"]["seccomp"]
    assert seccomp["default_errno"] == "EPERM"
    assert {"syscall": "execve", "action": "errno", "errno": "EACCES", "args": [],
            "reason": "nothing runs but the interpreter already running"} in seccomp["rules"]
    assert report["seccomp_allowed_calls"] == len({r["syscall"] for r in seccomp["rules"] if r["action"] == "allow"})


def test_prints_the_syscall_allowlist_with_reasons(capsys):
    call_command("print_confinement_policy", "--syscalls")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "default: every other call fails with EPERM"
    (prlimit,) = [line for line in lines if line.startswith("prlimit64 ")]
    assert prlimit.split()[1:5] == ["allow", "arg0", "==", "0x0"] and "never of another process" in prlimit
    (socket,) = [line for line in lines if line.startswith("socket ") and " EACCES " in line]
    assert "arg0 != 0x1" in socket


def test_prints_the_compiled_seccomp_filter_on_request():
    # libseccomp writes to the file descriptor itself, so capture at that level.
    with tempfile.TemporaryFile(mode="w+") as out:
        call_command("print_confinement_policy", "--seccomp-pfc", stdout=out)
        out.flush()
        out.seek(0)
        text = out.read()
    assert "filter for syscall \"execve\"" in text and "action ERRNO(13);" in text
    assert text.lstrip().startswith("{") and os.linesep in text
