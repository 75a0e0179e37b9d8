"""The zygote's serving of one run (warm sandbox), with a real fork and the real layer, as root."""
import ctypes
import json
import mmap
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from codejail_service import confinement
from codejail_service.confinement import zygote

ENFORCE = dict(confinement.DEFAULTS)


def serve_one(cwd, stdin=b"", rlimits=(), fds=None, lifetime=None, full=None, outcome=None, **extra):
    """
    Serve one request through a socketpair (by the light zygote, with its ``full`` one's pair if
    given); (messages, stdout, stderr). ``outcome``: a list, given what ``serve`` returned.
    """
    app, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    os.write(stdin_w, stdin)
    os.close(stdin_w)
    request = {"cwd": cwd, "rlimits": [[name, *limits] for name, limits in rlimits], **extra}
    socket.send_fds(app, [json.dumps(request).encode()], fds if fds is not None else [stdin_r, stdout_w, stderr_w])
    for fd in (stdin_r, stdout_w, stderr_w):
        os.close(fd)
    # As the zygote's main does: it waits for its runs' SIGCHLD.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        returned = zygote.serve(ours, listener, confinement, ENFORCE, {"PATH": "/usr/bin"},
                                lifetime or zygote.Lifetime(), full)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if outcome is not None:
        outcome.append(returned)
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
    assert messages[0]["pid"] > 0 and messages[1]["status"] == 0, (messages, err)
    lines = out.decode().splitlines()
    assert lines[0] == f"hello {run_dir} tmp True"
    assert lines[1].startswith("enforce [") and "'reaper'" in lines[1] and "'seccomp'" in lines[1]
    assert lines[1].endswith("] zygote")
    assert lines[2] == "denied"


def test_output_written_to_sys_dunder_stdout_is_flushed(run_dir):
    # codejail's wrapper swaps sys.stdout for a sink and writes the globals to sys.__stdout__.
    write_code(run_dir, "import sys\nsys.stdout = None\nsys.__stdout__.write('globals')\n")
    messages, out, _ = serve_one(run_dir)
    assert messages[1]["status"] == 0
    assert out == b"globals"


def test_the_run_gets_its_rlimits(run_dir):
    write_code(run_dir, "import resource\nprint(resource.getrlimit(resource.RLIMIT_CPU))\n")
    messages, out, _ = serve_one(run_dir, rlimits=[(resource.RLIMIT_CPU, (2, 3))])
    assert messages[1]["status"] == 0
    assert out == b"(2, 3)\n"


@pytest.mark.parametrize(("code", "status", "in_stderr"), [
    ("raise ValueError('boom')", 1, b"ValueError: boom"),
    ("import sys\nsys.exit(4)", 4, b""),
    ("import sys\nsys.exit('bye')", 1, b"bye"),
])
def test_the_run_ends_as_the_interpreter_would(run_dir, code, status, in_stderr):
    write_code(run_dir, code)
    messages, _, err = serve_one(run_dir)
    assert messages[1]["status"] == status
    assert in_stderr in err


@pytest.mark.parametrize("status", ["300", "-1", "2 ** 40", "2 ** 64", "True"])
def test_the_exit_status_is_a_fresh_interpreters_for_any_int(run_dir, status):
    write_code(run_dir, f"import sys\nsys.exit({status})")
    fresh = subprocess.run([sys.executable, "-E", "-B", "jailed_code"], cwd=run_dir, capture_output=True, check=False)
    messages, _, err = serve_one(run_dir)
    assert [message["status"] for message in messages[1:]] == [fresh.returncode] * 2, (messages, err)


def test_the_status_is_told_before_the_run_has_ended_then_what_it_used(run_dir):
    # Said by the run (its output closed) before its exit: the app answers on the first.
    write_code(run_dir, "import sys\nprint('out')\nsys.exit(5)")
    messages, out, _ = serve_one(run_dir)
    assert messages[1] == {"status": 5}
    assert messages[2]["status"] == 5 and messages[2]["ended"] is True and "cpu-ms" in messages[2]["counts"]
    assert out == b"out\n"


def test_a_run_whose_code_closed_the_ending_pipe_is_told_once_it_has_exited(run_dir):
    # Its twin above: without the pipe, the one message after the reaping.
    write_code(run_dir, f"import os, sys\nos.close({zygote.ENDING})\nsys.exit(5)")
    messages, _, err = serve_one(run_dir)
    assert len(messages) == 2 and messages[1]["status"] == 5 and messages[1]["ended"] is True, (messages, err)


@pytest.mark.parametrize(("said", "told"), [(b"7", [7, 7]), (b"x", [-9])])
def test_what_the_code_says_on_the_ending_pipe_ends_it_at_once(run_dir, said, told):
    # A status (any the code could have exited with) is told; anything else only ends the run.
    write_code(run_dir, f"import os, time\nos.write({zygote.ENDING}, {said!r})\ntime.sleep(30)")
    started = time.monotonic()
    messages, _, err = serve_one(run_dir)
    assert time.monotonic() - started < 10
    assert [message["status"] for message in messages[1:]] == told, (messages, err)


def test_a_run_that_says_nothing_runs_to_its_end(run_dir):
    # The twin of the one above: the zygote waits for it.
    write_code(run_dir, "import time\ntime.sleep(0.3)")
    started = time.monotonic()
    messages, _, err = serve_one(run_dir)
    assert time.monotonic() - started >= 0.3
    assert [message["status"] for message in messages[1:]] == [0, 0], (messages, err)


@pytest.mark.parametrize(("said", "status"), [
    (b"0", 0), (b"255", 255), (b"256", None), (b"-1", None), (b"07", None), (b" 7", None), (b"7x", None),
    (b"\xff", None), (b"", None),
])
def test_only_an_exit_status_said_on_the_ending_pipe_is_one(said, status):
    assert zygote.exit_status(said) == status


FAILURES = {
    "raised_in_a_function": "def grade(x):\n    return {}[x]\n\ngrade('answer')\n",
    "chained": "try:\n    1 / 0\nexcept ZeroDivisionError as exc:\n    raise ValueError('no') from exc\n",
    "in_handling": "try:\n    int('x')\nexcept ValueError:\n    [][1]\n",
    "syntax_error": "x = (1,\n",
    "in_an_imported_module": "import sys\nsys.path.insert(0, 'tmp')\nimport course_lib\ncourse_lib.check()\n",
    "recursion": "def f(n):\n    return f(n + 1)\nf(0)\n",
    "exception_group": "raise ExceptionGroup('many', [ValueError(1), TypeError(2)])\n",
    "excepthook_of_the_code": ("import sys\nsys.excepthook = lambda t, v, tb: print('hooked', t.__name__, "
                               "tb.tb_frame.f_code.co_filename.endswith('/jailed_code'), file=sys.stderr)\n1 / 0\n"),
}


@pytest.mark.parametrize("code", FAILURES.values(), ids=FAILURES.keys())
def test_a_failed_run_prints_what_a_fresh_interpreter_prints(run_dir, code):
    """The traceback starts at the code's own first frame, with no frame of the zygote or runpy."""
    write_code(run_dir, code)
    with open(os.path.join(run_dir, "tmp", "course_lib.py"), "w", encoding="utf-8") as lib:
        lib.write("def check():\n    raise RuntimeError('in the library')\n")
    fresh = subprocess.run([sys.executable, "-E", "-B", "jailed_code"], cwd=run_dir, capture_output=True,
                           check=False)
    messages, _, err = serve_one(run_dir)
    assert messages[1]["status"] == fresh.returncode
    assert err.decode() == fresh.stderr.decode()
    assert b"zygote" not in err and b"runpy" not in err
    assert fresh.returncode == 1 and err  # it did fail, as the case means to


def test_a_directory_that_is_not_a_run_dir_is_refused_before_any_code(tmp_path):
    (tmp_path / "jailed_code").write_text("print('ran')")
    messages, out, err = serve_one(str(tmp_path))
    assert messages[1]["status"] == confinement.EXIT_REFUSED
    assert out == b"" and b"codejail confinement refused to run" in err


def test_a_request_without_its_three_pipes_is_answered_with_an_error(run_dir):
    read_end, write_end = os.pipe()
    messages, _, _ = serve_one(run_dir, fds=[read_end])
    os.close(write_end)
    assert messages == [{"error": "expected 3 descriptors, got 1"}]


def test_a_zygote_asks_for_its_successor_after_max_runs_and_stops_at_ten_times_that(run_dir):
    write_code(run_dir, "pass")
    lifetime = zygote.Lifetime()
    replies = [serve_one(run_dir, lifetime=lifetime, max_runs=2)[0][0] for _ in range(4)]
    assert [reply.get("retire", False) for reply in replies] == [False, True, True, True]
    assert lifetime.runs == 4 and not lifetime.over({"max_runs": 2})
    lifetime.runs = 19
    assert not lifetime.over({"max_runs": 2})
    lifetime.runs = 20
    assert lifetime.over({"max_runs": 2})


def test_a_zygote_asks_for_its_successor_after_max_seconds(run_dir):
    write_code(run_dir, "pass")
    lifetime = zygote.Lifetime()
    assert "retire" not in serve_one(run_dir, lifetime=lifetime, max_seconds=60)[0][0]
    lifetime.born -= 61
    assert serve_one(run_dir, lifetime=lifetime, max_seconds=60)[0][0]["retire"] is True
    assert not lifetime.over({"max_seconds": 60})
    lifetime.born -= 60
    assert lifetime.over({"max_seconds": 60})


def test_without_bounds_a_zygote_serves_on(run_dir):
    write_code(run_dir, "pass")
    lifetime = zygote.Lifetime()
    lifetime.runs, lifetime.born = 10**6, 0
    assert "retire" not in serve_one(run_dir, lifetime=lifetime)[0][0]


def test_told_to_retire_a_zygote_serves_what_is_queued_then_exits(run_dir, tmp_path):
    # Its own twin: a run queued before the retire message is still served.
    write_code(run_dir, "print('served')")
    path = str(tmp_path / "zygote.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(8)
    retire = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    retire.connect(path)
    retire.send(json.dumps({"retire": True}).encode())
    queued = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    queued.connect(path)
    stdout_r, stdout_w = os.pipe()
    stdin_r, stdin_w = os.pipe()
    os.close(stdin_w)
    socket.send_fds(queued, [json.dumps({"cwd": run_dir, "rlimits": []}).encode()], [stdin_r, stdout_w, stdout_w])
    for fd in (stdin_r, stdout_w):
        os.close(fd)
    zygote.serve_forever(listener, confinement, ENFORCE, {"PATH": "/usr/bin"})  # returns: retired
    assert json.loads(queued.recv(4096))["pid"] > 0
    assert json.loads(queued.recv(4096))["status"] == 0
    with os.fdopen(stdout_r, "rb") as out:
        assert out.read() == b"served\n"
    for sock in (listener, retire, queued):
        sock.close()


def test_an_idle_zygote_stays_while_its_service_runs_and_goes_once_orphaned(tmp_path, monkeypatch):
    """Its parent (the service's master) is there for three idle timeouts, then gone: it exits."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(tmp_path / "zygote.sock"))
    listener.listen(1)
    monkeypatch.setattr(zygote, "IDLE_SECONDS", 0.01)
    parents = [100] * 4 + [1]  # adopted by 100 (its first look), then re-parented: 100 died
    monkeypatch.setattr(zygote.os, "getppid", lambda: parents.pop(0))
    zygote.serve_forever(listener, confinement, ENFORCE, {"PATH": "/usr/bin"})
    assert parents == []
    listener.close()


def test_a_retire_message_with_descriptors_is_a_malformed_run(run_dir):
    read_end, write_end = os.pipe()
    messages, _, _ = serve_one(run_dir, fds=[read_end], retire=True)
    os.close(write_end)
    assert messages == [{"error": "expected 3 descriptors, got 1"}]


def test_preload_skips_what_cannot_be_imported(capfd, monkeypatch):
    monkeypatch.setattr(zygote.os, "environ", dict(os.environ))
    zygote.preload(("json", "codejail_no_such_module"))
    out, err = capfd.readouterr()
    assert out == ""  # "ready" is main's to say, once both zygotes have preloaded
    assert "not preloading codejail_no_such_module: ModuleNotFoundError" in err
    assert zygote.os.environ["OPENBLAS_NUM_THREADS"] == "1"


@pytest.fixture
def full_zygote():
    """The full zygote, forked as the light one's main does (preloading json only): its pair's end."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        full = zygote.start_full(confinement, ENFORCE, {"PATH": "/usr/bin"}, names=("json",), held=())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    yield full
    full.close()


PARENT_CODE = "import os, sys\nprint(os.getppid(), 'scipy' in sys.modules)\n"


def test_a_light_run_is_forked_by_the_light_zygote_itself(run_dir, full_zygote):
    write_code(run_dir, PARENT_CODE)
    messages, out, err = serve_one(run_dir, full=full_zygote, light=True)
    assert messages[1]["status"] == 0 and messages[-1]["counts"]["zygote"] == "light", (messages, err)
    assert out.split() == [str(os.getpid()).encode(), b"False"]


@pytest.mark.parametrize(("code", "early"), [("import os, time\nos.close(1)\ntime.sleep(1)", True),
                                             ("import time\ntime.sleep(1)", False)])
def test_the_app_reads_the_end_of_a_runs_output_when_the_run_closes_it(run_dir, full_zygote, code, early):
    # Handed to the full zygote, the run's pipes are no longer held by the light one, which waits
    # until the run is served: the app reads their end as the run's, not as its zygotes'.
    write_code(run_dir, code)
    app, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pipes = [os.pipe() for _ in range(3)]
    os.close(pipes[0][1])
    request = {"cwd": run_dir, "rlimits": []}
    socket.send_fds(app, [json.dumps(request).encode()], [pipes[0][0], pipes[1][1], pipes[2][1]])
    for fd in (pipes[0][0], pipes[1][1], pipes[2][1]):
        os.close(fd)

    def serve():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # as the zygote's main does
        zygote.serve(ours, listener, confinement, ENFORCE, {"PATH": "/usr/bin"}, zygote.Lifetime(), full_zygote)

    server = threading.Thread(target=serve)
    started = time.monotonic()
    server.start()
    with os.fdopen(pipes[1][0], "rb") as out:
        assert out.read() == b""
    read_in = time.monotonic() - started
    server.join(10)
    os.close(pipes[2][0])
    for sock in (app, ours, listener):
        sock.close()
    assert (read_in < 0.6) if early else (read_in >= 0.9), read_in


def test_any_other_run_is_forked_by_the_full_zygote_which_exits_with_the_light_one(run_dir, full_zygote):
    write_code(run_dir, PARENT_CODE)
    for extra in ({}, {"light": False}, {"light": "yes"}):  # only an explicit true is light
        messages, out, err = serve_one(run_dir, full=full_zygote, **extra)
        assert messages[0]["pid"] > 0 and messages[1]["status"] == 0, (messages, err)
        assert messages[-1]["counts"]["zygote"] == "full"
        full_pid = int(out.split()[0])
        assert full_pid not in (os.getpid(), 0) and messages[0]["zygote"] == full_pid
    full_zygote.close()  # the light zygote has gone
    assert os.waitpid(full_pid, 0) == (full_pid, 0)


def test_a_run_for_a_full_zygote_that_has_gone_ends_the_light_one(run_dir, full_zygote):
    write_code(run_dir, PARENT_CODE)
    messages, out, _ = serve_one(run_dir, full=full_zygote)
    full_pid = int(out.split()[0])
    os.kill(full_pid, signal.SIGKILL)
    os.waitpid(full_pid, 0)
    outcome = []
    messages, out, _ = serve_one(run_dir, full=full_zygote, outcome=outcome)
    assert outcome == ["over"] and messages == [] and out == b""  # the app starts the run elsewhere
    # Its light runs it still serves until it has gone (allow twin).
    messages, out, _ = serve_one(run_dir, full=full_zygote, light=True)
    assert messages[1]["status"] == 0 and out.split()[0] == str(os.getpid()).encode()


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as found:
        return [int(child) for child in found.read().split()]


def eventually(value, accept, timeout=10.0):
    """``value()`` once ``accept`` takes it, or its last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not accept(found := value()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def spare_of(full_pid):
    """The full zygote's one child between runs (its spare), once it has forked it."""
    found = eventually(lambda: children(full_pid), bool)
    assert len(found) == 1, found
    return found[0]


def spare_fds(pid):
    """What ``pid``'s descriptors but 0-2 are ("socket", or the path), as far as they can be read."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if int(fd) > 2:
            found.append("socket" if target.startswith("socket:") else target)
    return found


def test_a_full_zygote_runs_each_run_in_a_spare_forked_before_the_run_came(run_dir, full_zygote):
    write_code(run_dir, PARENT_CODE)
    # Before any run: the full zygote is this process's child that has a child, its spare.
    full_pid = eventually(lambda: [pid for pid in children(os.getpid()) if children(pid)], bool)
    assert len(full_pid) == 1
    full_pid = full_pid[0]
    for _ in range(2):  # the spare forked as the full zygote started, then the one forked as a run started
        spare = spare_of(full_pid)
        messages, out, err = serve_one(run_dir, full=full_zygote)
        assert messages[0]["pid"] == spare and messages[0]["zygote"] == full_pid, (messages, err)
        assert messages[1]["status"] == 0 and out.split() == [str(full_pid).encode(), b"False"]
        assert _state(spare) is None  # reaped by the full zygote
    # It holds none of the zygote's descriptors (a run's pipes, the pair): only its own socket,
    # once it has closed them as it starts.
    spare = spare_of(full_pid)
    assert eventually(lambda: spare_fds(spare), lambda own: own == ["socket"]) == ["socket"]
    full_zygote.close()  # the light zygote has gone: the full one exits, so does its spare
    assert os.waitpid(full_pid, 0) == (full_pid, 0)
    assert eventually(lambda: _state(spare), lambda state: state in (None, "Z")) in (None, "Z")


def test_a_full_zygote_whose_spare_has_gone_forks_the_run(run_dir, full_zygote):
    write_code(run_dir, PARENT_CODE)
    messages, out, _ = serve_one(run_dir, full=full_zygote)
    full_pid = messages[0]["zygote"]
    spare = spare_of(full_pid)
    os.kill(spare, signal.SIGKILL)
    # Dead, not reaped (one killed as its run came is that run's end: -9).
    assert eventually(lambda: _state(spare), lambda state: state == "Z") == "Z"
    messages, out, err = serve_one(run_dir, full=full_zygote)
    assert messages[0]["pid"] != spare and messages[1]["status"] == 0, (messages, err)
    assert out.split()[0] == str(full_pid).encode()
    assert _state(spare) is None  # reaped
    assert spare_of(full_pid) != spare  # and it has a new one


@pytest.fixture
def package(monkeypatch):
    """A preloaded package (its name) holding 4 MiB of written pages, each shared with a fork until it writes it."""
    module = type(sys)("learned_package")
    module.buffer = bytearray(4 * 2**20)
    module.buffer[::zygote.PAGE] = b"\1" * (len(module.buffer) // zygote.PAGE)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def buffer_pages(name):
    """The addresses of the pages that lie wholly in ``name``'s buffer."""
    buffer = sys.modules[name].buffer
    start = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
    first = -(-start // zygote.PAGE) * zygote.PAGE
    return range(first, start + len(buffer) - zygote.PAGE + 1, zygote.PAGE)


def covered(pages, ranges):
    """How many of ``pages`` lie in ``ranges`` ((address, bytes) pairs)."""
    return sum(any(address <= page < address + size for address, size in ranges) for page in pages)


def test_what_a_packages_run_writes_of_the_zygotes_memory_is_learned(package):
    pages = buffer_pages(package)
    learned = zygote.learn_copies(None, {package: f"{package}.buffer[::4096] = b'\\2' * 1024\n"})
    assert covered(pages, learned[package]) == len(pages)
    # Allow twin: what it only reads, it does not copy.
    learned = zygote.learn_copies(None, {package: f"sum({package}.buffer[::4096])\n"})
    assert covered(pages, learned[package]) == 0
    # A package the zygote does not hold is not learned.
    assert zygote.learn_copies(None, {"not_preloaded": "x = 1\n"}) == {}


def own_pages(pid, pages):
    """How many of ``pages`` ``pid`` holds as its own (copied, no longer shared with its parent)."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        entries = [int.from_bytes(os.pread(fd, 8, page // zygote.PAGE * 8), "little") for page in pages]
    finally:
        os.close(fd)
    return sum(bool(entry & zygote.PRESENT and entry & zygote.EXCLUSIVE) for entry in entries)


@pytest.mark.parametrize(("uses", "copied"), [(["learned_package"], True), (["numpy"], False), ([], False)])
def test_a_spare_copies_ahead_what_a_run_of_the_packages_its_predecessor_used_writes(package, uses, copied):
    pages = buffer_pages(package)
    learned = zygote.learn_copies(None, {package: f"{package}.buffer[::4096] = b'\\2' * 1024\n"})
    pair, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    spare = zygote.Spare(pair, confinement, ENFORCE, {}, learned)
    spare.fork(uses)
    try:
        # Waiting for its run: its copy is done.
        assert eventually(lambda: _state(spare.pid), lambda state: state == "S") == "S"
        assert own_pages(spare.pid, pages) == (len(pages) if copied else 0)
    finally:
        spare.sock.close()  # its end of file: it exits
        os.waitpid(spare.pid, 0)
        pair.close()
        other.close()


def test_a_spare_stops_copying_as_its_run_comes():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    spare = zygote.Spare(None, confinement, ENFORCE, {}, {"p": [(4096, 4096)]})
    copied = []
    spare.madvise = lambda address, size, advice: copied.append((address, size, advice))
    ranges = [(page * 4096, 4096) for page in range(zygote.COPY_BATCH * 3)]
    spare._copy(ranges, theirs)  # noqa: SLF001 -- what the forked spare does first
    assert copied == [(address, size, zygote.MADV_POPULATE_WRITE) for address, size in ranges]
    copied.clear()
    ours.send(b"a run")
    spare._copy(ranges, theirs)  # noqa: SLF001
    assert copied == []
    ours.close()
    theirs.close()


def test_a_warm_runs_process_limit_counts_the_full_zygotes_spare_beside_it(run_dir, full_zygote):
    # Processes of the slot's user beside a run: a fresh run's leader and reaper; a warm run's two
    # zygotes, and the full zygote's spare as well (forked for the next run as a full run starts).
    write_code(run_dir, "import resource\nprint(resource.getrlimit(resource.RLIMIT_NPROC))\n")
    messages, out, _ = serve_one(run_dir, full=full_zygote, light=True, rlimits=[(resource.RLIMIT_NPROC, (15, 15))])
    assert messages[1]["status"] == 0 and out == b"(16, 16)\n"
    messages, out, _ = serve_one(run_dir, full=full_zygote, rlimits=[(resource.RLIMIT_NPROC, (15, 15))])
    assert messages[1]["status"] == 0 and out == b"(16, 16)\n"


def test_a_supervised_run_reaps_its_own_processes_not_the_zygotes_other_children(run_dir):
    # The light zygote's full one is its child too: a run's end must not reap it.
    sibling = subprocess.Popen(["/bin/true"])
    time.sleep(0.2)  # exited: waiting to be reaped by whoever waits for any child
    write_code(run_dir, "import os\nif os.fork() == 0:\n    os._exit(0)\n")  # left to its reaper
    messages, _, err = serve_one(run_dir)
    assert messages[1]["status"] == 0, (messages, err)
    assert os.waitpid(sibling.pid, 0) == (sibling.pid, 0)
    sibling.returncode = 0


def test_a_connection_that_sends_nothing_is_no_run(run_dir):
    app, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    app.close()
    assert zygote.serve(ours, None, confinement, ENFORCE, {}, zygote.Lifetime()) is None
    ours.close()


def test_a_runs_address_space_limit_counts_from_what_the_zygote_has_mapped(run_dir):
    """codejail's VMEM is what a run may allocate, preloaded modules or not (an allow twin: 64 MiB)."""
    mapped = zygote.address_space()
    assert mapped > 10 * 2**20
    limits = list(zygote.run_rlimits([(resource.RLIMIT_AS, 2**26, 2**26), (resource.RLIMIT_NPROC, 15, 15),
                                      (resource.RLIMIT_AS, resource.RLIM_INFINITY, resource.RLIM_INFINITY)], mapped))
    assert limits == [(resource.RLIMIT_AS, 2**26 + mapped, 2**26 + mapped), (resource.RLIMIT_NPROC, 16, 16),
                      (resource.RLIMIT_AS, resource.RLIM_INFINITY, resource.RLIM_INFINITY)]
    assert list(zygote.run_rlimits([(resource.RLIMIT_CPU, 1, 2)], mapped)) == [(resource.RLIMIT_CPU, 1, 2)]
    write_code(run_dir, "b = bytearray(48 * 1024 * 1024)\nprint(len(b) // 2**20)\n")
    messages, out, err = serve_one(run_dir, rlimits=[(resource.RLIMIT_AS, (2**26, 2**26))])
    assert messages[1]["status"] == 0, err
    assert out == b"48\n"
    write_code(run_dir, "try:\n    b = bytearray(80 * 1024 * 1024)\nexcept MemoryError:\n    print('denied')\n")
    messages, out, err = serve_one(run_dir, rlimits=[(resource.RLIMIT_AS, (2**26, 2**26))])
    assert out == b"denied\n", err


def test_apparmor_moves_a_run_from_the_zygote_profile_to_the_sandbox_profile(tmp_path):
    attr = tmp_path / "current"
    attr.write_text("openedx_codejail_service//codejail_zygote (enforce)\n")
    zygote.apparmor_enter_sandbox([str(tmp_path / "missing"), str(attr)])
    assert attr.read_text() == "changeprofile openedx_codejail_service//codejail_sandbox"


@pytest.mark.parametrize("label", ["unconfined\n", "openedx_codejail_service//codejail_sandbox (enforce)\n",
                                   "system_u:system_r:unconfined_t:s0\n"])
def test_apparmor_leaves_a_run_alone_unless_it_is_in_the_zygote_profile(tmp_path, label):
    attr = tmp_path / "current"
    attr.write_text(label)
    zygote.apparmor_enter_sandbox([str(attr)])
    assert attr.read_text() == label
    zygote.apparmor_enter_sandbox([str(tmp_path / "missing")])  # no AppArmor at all


def test_apparmor_that_cannot_be_read_stops_the_run(tmp_path):
    attr = tmp_path / "current"
    attr.mkdir()  # reading it fails with something else than "not there"
    with pytest.raises(OSError):
        zygote.apparmor_enter_sandbox([str(attr)])


def test_this_host_runs_are_left_in_their_profile():
    zygote.apparmor_enter_sandbox()  # the unit tests run unconfined (or in a profile of another name)


def anon_huge_kib(address):
    """AnonHugePages (KiB) of this process's mapping that holds ``address``."""
    found = None
    with open("/proc/self/smaps", encoding="ascii") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                low, high = (int(bound, 16) for bound in fields[0].split("-"))
                found = low <= address < high
            elif found and fields[0] == "AnonHugePages:":
                return int(fields[1])
    raise AssertionError(f"no mapping holds {address:#x}")


def test_the_preloads_anonymous_memory_is_collapsed_into_huge_pages():
    size = 8 * zygote.HUGE_PAGE
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    shared = mmap.mmap(-1, size)  # MAP_SHARED: not a private mapping, left as it is
    try:
        for memory in (region, shared):
            memory.write(b"x" * size)
        address, shared_address = (ctypes.addressof(ctypes.c_char.from_buffer(m)) for m in (region, shared))
        assert zygote.collapse_to_huge_pages() >= 7
        assert anon_huge_kib(address) >= 7 * zygote.HUGE_PAGE // 1024  # at least its 7 aligned ranges
        assert anon_huge_kib(shared_address) == 0
    finally:
        region.close()
        shared.close()


def test_without_huge_pages_the_zygote_says_so_and_goes_on(monkeypatch, capsys):
    monkeypatch.setattr(zygote, "MADV_COLLAPSE", 0x7FFF)  # no such advice: what a kernel without it answers
    assert zygote.collapse_to_huge_pages() == 0
    assert "no huge pages" in capsys.readouterr().err


def test_warm_up_runs_each_preloaded_packages_code_and_skips_what_fails(capsys):
    import json as json_module

    json_module.codejail_warmed = 0
    zygote.warm_up(("json", "os"), {"json": "json.codejail_warmed += 1", "os": "raise ValueError('x')",
                                       "codejail_not_preloaded": "raise SystemExit"})
    assert json_module.codejail_warmed == 1
    del json_module.codejail_warmed
    assert "not warming up os: ValueError('x')" in capsys.readouterr().err


def test_the_zygote_knows_its_user_from_sudo_without_the_password_database(monkeypatch):
    """Under its AppArmor profile the zygote may not read /etc/passwd: sudo's USER names it."""
    monkeypatch.setenv("USER", "codejail-sandbox-3")
    monkeypatch.setattr(zygote.pwd, "getpwuid", lambda uid: pytest.fail("the password database was read"))
    assert zygote.own_user_name() == "codejail-sandbox-3"


def test_without_user_the_zygote_asks_the_password_database(monkeypatch):
    monkeypatch.delenv("USER", raising=False)
    assert zygote.own_user_name() == zygote.pwd.getpwuid(os.getuid()).pw_name


def fake_random2():
    """A stand-in for random2 (not in the dev venv): classes of its own, as the prolog's."""
    import random  # noqa: PLC0415
    import types  # noqa: PLC0415

    module = types.ModuleType("random2")
    module.Random = type("Random", (random.Random,), {})
    module.SystemRandom = type("SystemRandom", (random.SystemRandom,), {})
    module.seeded = 0
    module.seed = lambda: setattr(module, "seeded", module.seeded + 1)
    return module


def test_what_preloaded_modules_took_from_random_is_what_they_take_after_the_prolog(monkeypatch):
    import random  # noqa: PLC0415
    import types  # noqa: PLC0415

    random2 = fake_random2()
    captured = types.ModuleType("codejail_test_captured")
    captured.Random, captured.SystemRandom = random.Random, random.SystemRandom
    captured.system = random.SystemRandom()
    captured.randbits = captured.system.getrandbits
    captured.stateful = random.Random(5)  # a generator of its own: reseeded per run, not replaced
    monkeypatch.setitem(sys.modules, "random2", random2)
    monkeypatch.setitem(sys.modules, "codejail_test_captured", captured)
    zygote.as_after_prolog()
    assert captured.Random is random2.Random and captured.SystemRandom is random2.SystemRandom
    assert type(captured.system) is random2.SystemRandom
    assert captured.randbits.__self__ is captured.system and captured.randbits.__name__ == "getrandbits"
    assert type(captured.stateful) is random.Random
    assert random.Random is not random2.Random  # random itself is left as it is


def test_without_random2_the_preloaded_modules_are_left_as_they_are(monkeypatch):
    import random  # noqa: PLC0415
    import types  # noqa: PLC0415

    captured = types.ModuleType("codejail_test_captured")
    captured.Random = random.Random
    monkeypatch.delitem(sys.modules, "random2", raising=False)
    monkeypatch.setitem(sys.modules, "codejail_test_captured", captured)
    zygote.as_after_prolog()
    assert captured.Random is random.Random


def test_a_forked_run_reseeds_the_generators_the_zygote_made_and_finds_its_tmp_dir(monkeypatch):
    import random  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    random2 = fake_random2()
    monkeypatch.setitem(sys.modules, "random2", random2)
    monkeypatch.delitem(sys.modules, "numpy.random", raising=False)  # not in the dev venv's run
    monkeypatch.setattr(tempfile, "tempdir", "/zygote/tmp")
    before = random.getstate()
    zygote.fresh_state()
    assert random.getstate() != before and random2.seeded == 1
    assert tempfile.tempdir is None


# --- The zygote as its runs' reaper (one process per run: zygote.supervise_run) -------------------

def _state(pid):
    """A process's /proc state letter, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except FileNotFoundError:
        return None


def _left_running(pid, seconds=2.0):
    """True if ``pid`` still runs after ``seconds`` (a zombie, or gone, is not running)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _state(pid) in (None, "Z", "X"):
            return False
        time.sleep(0.02)
    return True


def test_deny_a_runs_child_outliving_the_run_it_is_killed_and_tmp_emptied(run_dir):
    write_code(run_dir, "import os, time\n"
                        "child = os.fork()\n"
                        "if child == 0:\n    time.sleep(60)\n    os._exit(0)\n"
                        "os.makedirs('tmp/deep/er')\nopen('tmp/deep/er/file', 'w').close()\n"
                        "print(child)\n")
    messages, out, err = serve_one(run_dir)
    assert messages[1]["status"] == 0, err
    child = int(out.split()[0])
    assert not _left_running(child), "the run's child outlived its answer"
    assert os.listdir(os.path.join(run_dir, "tmp")) == []


def test_allow_a_run_that_leaves_nothing_keeps_its_output(run_dir):
    write_code(run_dir, "import os\nopen('tmp/kept-until-the-end', 'w').close()\n"
                        "print(sorted(os.listdir('tmp')))\n")
    messages, out, err = serve_one(run_dir)
    assert messages[1]["status"] == 0, err
    assert out == b"['kept-until-the-end']\n"
    assert os.listdir(os.path.join(run_dir, "tmp")) == []


# {n} children, each spinning {seconds} s of CPU time, then the run says it is done.
SPIN = """
import os, time
def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
children = []
for _ in range({n}):
    pid = os.fork()
    if pid == 0:
        spin({seconds})
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print("done")
"""


def test_deny_a_run_past_its_cpu_bound_across_processes(run_dir, monkeypatch):
    monkeypatch.setitem(ENFORCE, "run_cpu_factor", 0.5)  # x RLIMIT_CPU 2 s: 1 s for the whole run
    write_code(run_dir, SPIN.format(n=3, seconds=0.9))
    messages, out, err = serve_one(run_dir, rlimits=[(resource.RLIMIT_CPU, (2, 2))])
    assert messages[1]["status"] == -24, (messages, err)
    assert b"used more than 1 s of CPU time together" in err and out == b""


def test_allow_a_run_within_its_cpu_bound_across_processes(run_dir, monkeypatch):
    monkeypatch.setitem(ENFORCE, "run_cpu_factor", 0.5)
    write_code(run_dir, SPIN.format(n=2, seconds=0.2))
    messages, out, err = serve_one(run_dir, rlimits=[(resource.RLIMIT_CPU, (2, 2))])
    assert messages[1]["status"] == 0, (messages, err)
    assert out == b"done\n"


def test_a_runs_status_says_what_its_processes_used(run_dir):
    write_code(run_dir, "x = [0] * 10**6")
    messages, _, err = serve_one(run_dir)
    counts = messages[-1]["counts"]
    assert messages[1]["status"] == 0, err
    assert counts["cpu-ms"] > 0 and counts["faults"] > 1000 and counts["reap-ms"] >= 0  # 8 MB of new pages


def test_a_run_whose_app_has_gone_is_still_ended_and_cleaned_up(run_dir):
    # The app sends the run, then goes (its worker died): the zygote ends and reaps the run and
    # empties its tmp/ all the same, and serves on.
    write_code(run_dir, "import os, time\nopen('tmp/left', 'w').close()\n"
                        "if os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\n")
    app, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    socket.send_fds(app, [json.dumps({"cwd": run_dir, "rlimits": []}).encode()], [stdin_r, stdout_w, stderr_w])
    for fd in (stdin_r, stdin_w, stdout_w, stderr_w):
        os.close(fd)
    app.close()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        assert zygote.serve(ours, listener, confinement, ENFORCE, {"PATH": "/usr/bin"}, zygote.Lifetime()) is None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        ours.close()
        listener.close()
    with os.fdopen(stdout_r, "rb") as out, os.fdopen(stderr_r, "rb") as err:
        assert out.read() == b"" and err.read() == b""  # every holder of the run's pipes has gone
    assert os.listdir(os.path.join(run_dir, "tmp")) == []


def test_a_run_that_fails_before_it_has_its_own_group_is_still_reaped(run_dir, capfd):
    # Supervised, the zygote reaps the run's process group; a child that failed as it started
    # (here: a listener it cannot close) never took it, and must not be waited for forever.
    write_code(run_dir, "x = 1\n")
    app, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
    socket.send_fds(app, [json.dumps({"cwd": run_dir, "rlimits": []}).encode()], fds)
    for fd in fds:
        os.close(fd)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        zygote.serve(ours, None, confinement, ENFORCE, {"PATH": "/usr/bin"}, zygote.Lifetime())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    messages = [json.loads(app.recv(4096)) for _ in range(2)]
    app.close()
    ours.close()
    assert messages[1]["status"] == 1
    assert "the run could not start" in capfd.readouterr().err


def test_allow_a_run_beside_a_busy_child_of_its_zygote_that_is_not_the_runs(run_dir, monkeypatch):
    # The light zygote's full one is its child, with seconds of CPU and a big heap: not the run's
    # (the deny twin: test_deny_a_run_past_its_cpu_bound_across_processes).
    monkeypatch.setitem(ENFORCE, "run_cpu_factor", 0.5)  # x RLIMIT_CPU 1 s: 0.5 s for the whole run
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.8\n"
                             "while time.process_time() < end:\n    pass\ntime.sleep(30)\n"])
    try:
        time.sleep(1.2)  # its 0.8 s of CPU spent, still alive
        write_code(run_dir, "x = 1\n")
        messages, _, err = serve_one(run_dir, rlimits=[(resource.RLIMIT_CPU, (1, 1))])
        assert messages[1]["status"] == 0, (messages, err)
    finally:
        busy.kill()
        busy.wait()
