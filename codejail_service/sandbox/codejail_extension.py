"""
The one place where this service extends codejail.

``codejail.safe_exec`` stays the one path to execution, and codejail's ``jail_code`` still
builds every run (its run directory, ``jailed_code``, stdin, limits, and cleanup). It calls out
for three things, which ``install()`` (from ``CoreConfig.ready``) points here:

- ``jail_code.temp_directory``: the run's directory, made by the ``Run`` in its slot's parent
  directory (pool.py) and noted in the slot;
- ``jail_code.run_subprocess`` (and ``run_subprocess_through_proxy``, so that codejail's proxy
  option cannot bypass the slot's user): ``jail_code`` calls it twice per run, first for the run's
  program with the run's limits, then for the cleanup of the run's ``tmp/``. The first goes to
  ``runner.run_program`` with the run's own command line (commands.py) as the run's user, the
  second to ``runner.clean_tmp``. Which call is which comes from their order in the run, never
  from codejail's command line.

``jail_code`` has no parameter to carry the run, so ``safe_exec`` here sets one context variable
(the only one) for the length of codejail's call; nothing else sets it. The test
test_codejail_extension.py checks codejail's functions that this replaces or wraps against the
installed edx-codejail.
"""

import contextlib
import contextvars
import os
import shutil

from codejail import jail_code
from codejail import safe_exec as codejail_safe_exec
from codejail.safe_exec import SafeExecException

from codejail_service.sandbox import commands, config, runner, zygote_client

# The run that codejail's jail_code is building now, in this thread (set by safe_exec only).
_current_run = contextvars.ContextVar("codejail_service_run")


def install():
    """Point codejail's calls out at this module (idempotent)."""
    jail_code.temp_directory = temp_directory
    jail_code.run_subprocess = run_subprocess
    jail_code.run_subprocess_through_proxy = run_subprocess


def safe_exec(code, globals_dict, *, run, python_path=None, limit_overrides_context=None, slug=None,
              extra_files=None):
    """
    ``codejail.safe_exec.safe_exec``, for ``run`` (a ``Run`` held from admission).

    Once the run's program has answered with status 0, codejail reads its stdout as the globals:
    ``json.loads``, then ``dict.update``. What the run's code wrote there is its own choice, so
    output codejail cannot read as a JSON object (not JSON, not UTF-8, another JSON value, nested
    past the parser's recursion limit) is the run's failure, answered as codejail answers one
    (``SafeExecException``), never the service's internal error.
    """
    run.light, run.uses = zygote_client.needs(code, python_path)
    token = _current_run.set(run)
    try:
        codejail_safe_exec.safe_exec(code, globals_dict, python_path=python_path,
                                     limit_overrides_context=limit_overrides_context, slug=slug,
                                     extra_files=extra_files)
    except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        if run.status != 0:
            raise
        raise SafeExecException(_not_the_protocol(f"{type(exc).__name__}: {exc}")) from None
    finally:
        _current_run.reset(token)
    if run.status == 0 and not run.answered_an_object:  # e.g. a list of pairs, which dict.update takes
        raise SafeExecException(_not_the_protocol("not a JSON object"))


def _not_the_protocol(detail):
    return f"Couldn't execute jailed code: the sandbox's output was not the JSON object of globals codejail " \
           f"reads ({detail[:300]})"


def _run():
    try:
        return _current_run.get()
    except LookupError:
        raise RuntimeError("codejail ran outside a run: call codejail_extension.safe_exec with the admitted run") \
            from None


@contextlib.contextmanager
def temp_directory():
    """codejail's ``util.temp_directory``: the run's directory, removed after the run."""
    run = _run()
    path = run.make_run_dir()
    run.cleanup.callback(shutil.rmtree, path)  # as the slot is released, after the run's answer
    yield path


def run_subprocess(cmd, stdin=None, cwd=None, env=None, rlimits=None, realtime=None, slug=None):
    """
    codejail's ``subproc.run_subprocess`` (same arguments, same ``(status, stdout, stderr)``):
    the run's program on the first call of a run, the cleanup of its ``tmp/`` on the second.
    codejail's ``cmd`` is not run: the run's own command lines are (commands.py).
    """
    run = _run()
    if not run.started:
        run.started = True
        run.rlimits, run.realtime = tuple(rlimits or ()), realtime
        command = commands.program(run.user, config.current().python_bin)
        status, stdout, stderr = runner.run_program(run, command, stdin=stdin, cwd=cwd, env=env, slug=slug)
        run.status, run.answered_an_object = status, stdout.lstrip()[:1] == b"{"
        return status, stdout, stderr
    # As the slot is released, after the run's answer and its processes' end (Run.release).
    run.cleanup.callback(runner.clean_tmp, run, os.path.join(run.run_dir, "tmp"))
    return 0, b"", b""  # codejail does not look at it
