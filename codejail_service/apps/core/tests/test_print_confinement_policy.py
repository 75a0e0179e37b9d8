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
    assert {"syscall": "execve", "errno": "EACCES", "args": []} in report["policy"]["seccomp"]["rules"]


def test_prints_the_compiled_seccomp_filter_on_request():
    # libseccomp writes to the file descriptor itself, so capture at that level.
    with tempfile.TemporaryFile(mode="w+") as out:
        call_command("print_confinement_policy", "--seccomp-pfc", stdout=out)
        out.flush()
        out.seek(0)
        text = out.read()
    assert "filter for syscall \"execve\"" in text and "action ERRNO(13);" in text
    assert text.lstrip().startswith("{") and os.linesep in text
