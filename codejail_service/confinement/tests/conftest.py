"""Helpers for testing the confinement layer in forked children (it cannot be undone)."""
import json
import os
import pwd
import shutil
import tempfile
import traceback

import pytest


def in_child(function):
    """
    Run ``function()`` in a forked child; return ``(value, wait_status)``.

    The child's return value travels back as JSON; an exception comes back as
    ``{"raised": "<ExceptionName>", "errno": <n>}``.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        os.close(read_end)
        try:
            value = function()
        except BaseException as exc:
            value = {"raised": type(exc).__name__, "errno": getattr(exc, "errno", None),
                     "text": traceback.format_exc()[-2000:]}
        with os.fdopen(write_end, "w") as out:
            json.dump(value, out)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        data = result.read()
    _, status = os.waitpid(pid, 0)
    return (json.loads(data) if data else None), status


def errno_of(call):
    """Run ``call()``: "ok", or the name of the errno of the OSError it raised."""
    import errno
    try:
        call()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


@pytest.fixture
def run_dir():
    """A directory shaped like codejail's: /tmp/codejail-XXXX, owned by another user, with tmp/."""
    if os.geteuid() != 0:
        pytest.fail("the confinement tests make run directories owned by another user: run them as root")
    path = tempfile.mkdtemp(prefix="codejail-", dir="/tmp")
    nobody = pwd.getpwnam("nobody")
    os.mkdir(os.path.join(path, "tmp"))
    with open(os.path.join(path, "jailed_code"), "w", encoding="utf-8") as code:
        code.write("pass\n")
    for entry in (path, os.path.join(path, "tmp"), os.path.join(path, "jailed_code")):
        os.chown(entry, nobody.pw_uid, nobody.pw_gid)
    os.chmod(path, 0o775)
    os.chmod(os.path.join(path, "tmp"), 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)
