"""Run a snippet in the sandbox and report how it ended: "ok", or the errno name it raised."""
import textwrap

PROBE = """\
import errno as _errno
try:
{body}
    outcome = "ok"
except OSError as _exc:
    outcome = _errno.errorcode.get(_exc.errno, str(_exc.errno)) if _exc.errno else type(_exc).__name__
"""


def probe(run, body, globals_dict=None):
    """The outcome of ``body`` in the sandbox: "ok" or e.g. "EACCES"; fails the test on an emsg."""
    result = run(PROBE.format(body=textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")),
                 globals_dict=globals_dict)
    assert result.status == 200, result
    assert result.emsg is None, result
    return result.globals["outcome"]
