"""The zygote's serving of one run (warm sandbox), with a real fork and the real layer, as root."""
import json
import os
import resource
import socket

import pytest

from codejail_service import confinement
from codejail_service.confinement import zygote

ENFORCE = dict(confinement.DEFAULTS)


def serve_one(cwd, stdin=b"", rlimits=(), fds=None):
    """Serve one request through a socketpair; (messages, stdout, stderr)."""
    app, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    os.write(stdin_w, stdin)
    os.close(stdin_w)
    request = {"cwd": cwd, "rlimits": [[name, *limits] for name, limits in rlimits]}
    socket.send_fds(app, [json.dumps(request).encode()], fds if fds is not None else [stdin_r, stdout_w, stderr_w])
    for fd in (stdin_r, stdout_w, stderr_w):
        os.close(fd)
    zygote.serve(ours, listener, confinement, ENFORCE, {"PATH": "/usr/bin"})
    messages = []
    app.setblocking(False)
    try:
        while message := app.recv(4096):
            messages.append(json.loads(message))
    except BlockingIOError:
        pass
    with os.fdopen(stdout_r, "rb") as out, os.fdopen(stderr_r, "rb") as err:
        output = out.read(), err.read()
    for sock in (app, ours, listener):
        sock.close()
    return messages, *output


def write_code(run_dir, code):
    with open(os.path.join(run_dir, "jailed_code"), "w", encoding="utf-8") as jailed:
        jailed.write(code)


def test_a_run_is_forked_confined_and_reported(run_dir):
    # Its own session and process group, led by the run's leader; the code's parent is the
    # reaper, not the leader; the layer's status; a denial.
    write_code(run_dir, "import sys, os, codejail_service.confinement as c\n"
                        "print(sys.stdin.read(), os.getcwd(), os.environ['TMPDIR'], os.getpgid(0) == os.getsid(0)"
                        " != os.getppid())\n"
                        "print(c.STATUS['mode'], sorted(c.STATUS['layers']), c.STATUS['forked_by'])\n"
                        "try:\n    os.listdir('/')\nexcept PermissionError:\n    print('denied')\n")
    messages, out, err = serve_one(run_dir, b"hello")
    assert messages[0]["pid"] > 0 and messages[1] == {"status": 0}, (messages, err)
    lines = out.decode().splitlines()
    assert lines[0] == f"hello {run_dir} tmp True"
    assert lines[1].startswith("enforce [") and "'reaper'" in lines[1] and "'seccomp'" in lines[1]
    assert lines[1].endswith("] zygote")
    assert lines[2] == "denied"


def test_output_written_to_sys_dunder_stdout_is_flushed(run_dir):
    # codejail's wrapper swaps sys.stdout for a sink and writes the globals to sys.__stdout__.
    write_code(run_dir, "import sys\nsys.stdout = None\nsys.__stdout__.write('globals')\n")
    messages, out, _ = serve_one(run_dir)
    assert messages[1] == {"status": 0}
    assert out == b"globals"


def test_the_run_gets_its_rlimits(run_dir):
    write_code(run_dir, "import resource\nprint(resource.getrlimit(resource.RLIMIT_NPROC))\n")
    messages, out, _ = serve_one(run_dir, rlimits=[(resource.RLIMIT_NPROC, (15, 15))])
    assert messages[1] == {"status": 0}
    assert out == b"(15, 15)\n"


@pytest.mark.parametrize(("code", "status", "in_stderr"), [
    ("raise ValueError('boom')", 1, b"ValueError: boom"),
    ("import sys\nsys.exit(4)", 4, b""),
    ("import sys\nsys.exit('bye')", 1, b"bye"),
])
def test_the_run_ends_as_the_interpreter_would(run_dir, code, status, in_stderr):
    write_code(run_dir, code)
    messages, _, err = serve_one(run_dir)
    assert messages[1] == {"status": status}
    assert in_stderr in err


def test_a_directory_that_is_not_a_run_dir_is_refused_before_any_code(tmp_path):
    (tmp_path / "jailed_code").write_text("print('ran')")
    messages, out, err = serve_one(str(tmp_path))
    assert messages[1] == {"status": confinement.EXIT_REFUSED}
    assert out == b"" and b"codejail confinement refused to run" in err


def test_a_request_without_its_three_pipes_is_answered_with_an_error(run_dir):
    read_end, write_end = os.pipe()
    messages, _, _ = serve_one(run_dir, fds=[read_end])
    os.close(write_end)
    assert messages == [{"error": "expected 3 descriptors, got 1"}]
