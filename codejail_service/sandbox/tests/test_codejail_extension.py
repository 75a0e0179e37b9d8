"""
The one extension point into codejail, checked against the installed edx-codejail: what it
replaces still exists with the same signature, codejail still calls it as this service expects,
and the command lines it runs are codejail's own and the sudoers file's.
"""

import inspect
import os
import re
from pathlib import Path
from unittest import mock

import pytest
from codejail import jail_code, subproc, util
from codejail import safe_exec as codejail_safe_exec

from codejail_service.sandbox import codejail_extension, commands, runner
from codejail_service.sandbox.pool import Slot
from codejail_service.sandbox.run import FRESH, Run

PROVISION_SH = Path(__file__).resolve().parents[3] / "deploy" / "provision.sh"


def test_install_points_codejails_calls_out_at_the_extension():
    names = ("temp_directory", "run_subprocess", "run_subprocess_through_proxy")
    with mock.patch.multiple(jail_code, **{name: "codejail's own" for name in names}):
        codejail_extension.install()
        assert jail_code.temp_directory is codejail_extension.temp_directory
        assert jail_code.run_subprocess is codejail_extension.run_subprocess
        assert jail_code.run_subprocess_through_proxy is codejail_extension.run_subprocess


def test_what_the_extension_replaces_has_the_same_signature_in_codejail():
    ours = inspect.signature(codejail_extension.run_subprocess)
    assert inspect.signature(subproc.run_subprocess) == ours
    assert inspect.signature(util.temp_directory) == inspect.signature(codejail_extension.temp_directory)


def test_the_extensions_safe_exec_passes_on_arguments_codejails_safe_exec_takes():
    theirs = inspect.signature(codejail_safe_exec.safe_exec).parameters
    ours = [name for name in inspect.signature(codejail_extension.safe_exec).parameters if name != "run"]
    assert ours == [name for name in theirs if name in ours]  # same names, same order
    assert not set(ours) - set(theirs)


def test_jail_code_calls_out_through_the_names_the_extension_replaces():
    source = inspect.getsource(jail_code.jail_code)
    assert set(jail_code.jail_code.__code__.co_names) >= {"temp_directory", "run_subprocess",
                                                          "run_subprocess_through_proxy"}
    assert "with temp_directory() as homedir:" in source
    # Twice per run, the program first (with its limits), then the cleanup: the extension's order.
    calls = re.findall(r"run_subprocess_fn\((.*?)\)\n", source, re.DOTALL)
    assert len(calls) == 2 and "rlimits=" in calls[0] and "rlimits" not in calls[1]


@pytest.fixture
def configured(settings, tmp_path, monkeypatch):
    """codejail configured for user ``sbx``; runs in a fresh run of slot ``sbx`` (no pool)."""
    saved = dict(jail_code.COMMANDS)
    jail_code.configure("python", "/venv/bin/python", user="sbx")
    settings.CODE_JAIL = {**settings.CODE_JAIL, "user": "sbx", "python_bin": "/venv/bin/python"}
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    codejail_extension.install()
    yield Run(Slot(None, "sbx", None), FRESH)
    jail_code.COMMANDS.clear()
    jail_code.COMMANDS.update(saved)


def test_codejail_builds_the_run_and_the_runner_runs_the_runs_own_command_lines(configured):
    seen = {}
    codejails = []
    real = codejail_extension.run_subprocess

    def spy(cmd, *args, **kwargs):
        codejails.append(cmd)
        return real(cmd, *args, **kwargs)

    def run_program(run, command, stdin=None, cwd=None, env=None, slug=None):
        seen.update(run=run, command=command, cwd=cwd, env=env, slug=slug, stdin=stdin)
        assert os.path.isfile(os.path.join(cwd, "jailed_code"))
        open(os.path.join(cwd, "tmp", "left.txt"), "w").close()
        return 0, b'{"x": 2}', b""

    with mock.patch.object(jail_code, "run_subprocess", spy), \
            mock.patch.object(runner, "run_program", side_effect=run_program), \
            mock.patch("subprocess.run") as cleanup:
        globals_dict = {"x": 1}
        codejail_extension.safe_exec("x = x + 1", globals_dict, run=configured, slug="s1")
        run = configured
        # What the run left is removed as its slot is released, after its answer.
        assert os.path.isfile(os.path.join(run.run_dir, "tmp", "left.txt"))
        with mock.patch.object(run.slot, "release") as release:
            run.release()
        release.assert_called_once_with()
    assert globals_dict == {"x": 2}
    assert seen["run"] is run and seen["cwd"] == run.run_dir and seen["env"] == {} and seen["slug"] == "s1"
    assert not os.path.exists(run.run_dir)
    # The run's limits are codejail's, as it handed them to its subprocess.
    assert run.realtime == 3 and dict(run.rlimits) == dict(jail_code.create_rlimits(jail_code.get_effective_limits()))
    # codejail's own command lines are the ones the runner runs (the cleanup with sudo -n).
    assert codejails[0] == seen["command"] == commands.program("sbx", "/venv/bin/python")
    assert [word for word in commands.cleanup("sbx", os.path.join(run.run_dir, "tmp")) if word != "-n"] \
        == codejails[1]
    cleanup.assert_not_called()  # the app removed the file itself


def test_codejail_outside_a_run_is_refused(configured):
    with pytest.raises(RuntimeError, match="outside a run"):
        codejail_safe_exec.safe_exec("x = 1", {})


def _sudoers_aliases():
    """{alias: [command words, ...]} of the sudoers heredoc in deploy/provision.sh."""
    text = PROVISION_SH.read_text()
    heredoc = text[text.index("<<SUDOERS\n"):text.index("\nSUDOERS\n")].replace("\\\\\n", "")
    aliases = {}
    for name, value in re.findall(r"^Cmnd_Alias (\w+) = (.*)$", heredoc, re.MULTILINE):
        aliases[name] = [command.split() for command in re.split(r"(?<=;),\s*", value)]
    return aliases


def test_the_sudoers_file_allows_exactly_the_commands_the_app_runs():
    aliases = _sudoers_aliases()
    venv = "$sandbox_venv/bin/python"
    # Everything after `sudo [-n] -u <user>` (TMPDIR=tmp is an environment variable sudo keeps).
    assert aliases["CODEJAIL_PYTHON"] == [commands.program("u", venv)[4:]]
    assert aliases["CODEJAIL_CLEANUP"] == [commands.cleanup("u", "/tmp/codejail-*/tmp")[4:],
                                           commands.cleanup("u", "$run_root/*/codejail-*/tmp")[4:]]
    assert aliases["CODEJAIL_KILL_OWN"] == [commands.kill_own("u")[4:]]
    assert aliases["CODEJAIL_KILL_GROUPS"] == [commands.kill_groups("u", ["*"])[4:]]
    assert aliases["CODEJAIL_ZYGOTE"] == [
        commands.zygote("u", f"{venv}-zygote", "$site_packages/codejail_confinement/zygote.py")[4:]]
    # codejail's time limit: `sudo pkill -9 -g <pgid>` as root (subproc.ProcessKillerThread).
    assert aliases["CODEJAIL_KILL"] == [["/usr/bin/pkill", "-9", "-g", "*"]]
    assert '"sudo", "pkill", "-9", "-g"' in inspect.getsource(subproc.ProcessKillerThread.run)


@pytest.mark.parametrize(("stdout", "detail"), [
    (b'[["x", 2]]', "not a JSON object"),  # dict.update would take it
    (b"[1, 2]", "TypeError: cannot convert dictionary update sequence"),
    (b"7", "TypeError: 'int' object is not iterable"),
    (b'{"x": ' * 100_000 + b"1" + b"}" * 100_000, "RecursionError"),
    (b'{"x": "\xff"}', "UnicodeDecodeError"),
    (b'{"x": ', "JSONDecodeError"),
])
def test_output_that_is_not_a_json_object_of_globals_is_the_runs_failure(configured, stdout, detail):
    """What the run's code writes as its output is its own doing: a failed run, not an internal error."""
    with mock.patch.object(runner, "run_program", return_value=(0, stdout, b"")), mock.patch("subprocess.run"):
        globals_dict = {"x": 1}
        with pytest.raises(codejail_safe_exec.SafeExecException, match="was not the JSON object of globals") as raised:
            codejail_extension.safe_exec("x = 2", globals_dict, run=configured)
    assert detail in str(raised.value)


def test_a_json_object_of_globals_is_read_as_it_is(configured):
    answer = (0, b' {"x": [[1]]}', b"")
    with mock.patch.object(runner, "run_program", return_value=answer), mock.patch("subprocess.run"):
        globals_dict = {"x": 1}
        codejail_extension.safe_exec("x = [[1]]", globals_dict, run=configured)
    assert globals_dict == {"x": [[1]]}


def test_a_failed_runs_output_is_codejails_to_report(configured):
    with mock.patch.object(runner, "run_program", return_value=(1, b"[1]", b"Traceback")), mock.patch("subprocess.run"):
        with pytest.raises(codejail_safe_exec.SafeExecException, match="with status code: 1"):
            codejail_extension.safe_exec("raise", {}, run=configured)
