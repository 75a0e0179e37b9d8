"""
The one way this service runs code: a thin wrapper around ``codejail.safe_exec``.

Used by the code-exec view and by the startup safety checks alike, so the checks prove the
exact path requests take.
"""

import copy
import errno
import logging

from codejail.safe_exec import SafeExecException
from django.conf import settings
from edx_django_utils.monitoring import record_exception

from codejail_service.sandbox.codejail_extension import safe_exec

log = logging.getLogger(__name__)

# Shown to the caller when something other than the submitted code failed; details go to the log.
UNEXPECTED_ERROR_EMSG = "Codejail service failed to run the code because of an internal error; see the service logs."


def cap_emsg(emsg):
    """
    Shorten an oversize emsg to its head and tail, saying how much was left out.

    codejail puts all of the sandbox's stdout and stderr into its message, so code that floods
    them would otherwise make an answer of hundreds of MB. The tail keeps the end of stderr (the
    traceback's last lines) and codejail's closing "with status code: N".
    """
    limit = settings.CODEJAIL_MAX_EMSG_CHARS
    if len(emsg) <= limit:
        return emsg
    keep = limit // 2
    return f"{emsg[:keep]} [... {len(emsg) - 2 * keep} characters left out ...] {emsg[-keep:]}"


def run_code(code, globals_dict, *, run, python_path=None, limit_overrides_context=None, slug=None,
             extra_files=None):
    """
    Run ``code`` as ``run`` (a ``Run`` the admission gate handed out) and return
    ``(globals_dict_out, emsg)``.

    ``globals_dict`` is never modified: safe_exec works on a deep copy. On success ``emsg`` is
    None and the first item holds the JSON-safe globals after the run. On any failure the first
    item is the input globals, unchanged, and ``emsg`` says what went wrong:

    - the code raised, was killed, or exited non-zero: codejail's own message, with the
      sandbox's stdout, stderr (traceback) and status, which operators and authors rely on;
    - the sandbox's stdout was not the JSON object that codejail's protocol expects (the run's
      own doing: codejail_extension.safe_exec says so as codejail says a run failed);
    - anything else (misconfiguration, sudo failure, ...): logged with its traceback, recorded
      with record_exception(), and answered with a generic message.
    """
    globals_copy = copy.deepcopy(globals_dict)
    try:
        safe_exec(
            code,
            globals_copy,
            run=run,
            python_path=python_path,
            limit_overrides_context=limit_overrides_context,
            slug=slug,
            extra_files=extra_files,
        )
    except SafeExecException as exc:
        return globals_dict, cap_emsg(str(exc))
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            log.exception("Unexpected error while running code for %r", slug)
            record_exception()
            return globals_dict, UNEXPECTED_ERROR_EMSG
        # The web app could not write the run directory: say so plainly, the service stays up.
        log.error("No space for the run directory of %r: %s", slug, exc)
        record_exception()
        return globals_dict, f"Couldn't execute jailed code: no space left for its run directory ({exc.strerror})"
    except Exception:  # any failure must become an answer, never an HTML 500
        log.exception("Unexpected error while running code for %r", slug)
        record_exception()
        return globals_dict, UNEXPECTED_ERROR_EMSG
    return globals_copy, None
