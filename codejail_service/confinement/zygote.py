"""
The warm sandbox (docs/decisions/0007-warm-sandbox.rst; off unless CODEJAIL_WARM_SANDBOX).

A sandbox interpreter that has already imported what runs import most (``PRELOAD``) and forks
one child per run. The child does what a fresh ``python -E -B jailed_code`` does, in the same
order: it moves into the run directory, takes the run's rlimits and a session of its own, is
confined by this package (``confine``: Landlock, seccomp, the reaper) before it reads any
submitted code, then runs ``jailed_code`` as ``__main__``. What differs from a fresh
interpreter, and why that is acceptable, is the ADR's subject.

Started by the web app as a pool slot's sandbox user, through a pinned sudoers rule:
``<sandbox venv>/bin/python -E -B -S <this file>``, with a listening ``AF_UNIX``
``SOCK_SEQPACKET`` socket as its stdin (sudo closes every other descriptor). The socket lives in
the app's private slot directory: only the app can connect, and a run cannot (seccomp refuses
``connect``). Per connection, one run:

- app -> zygote: ``{"cwd": <run dir>, "rlimits": [[resource, soft, hard], ...]}`` with the run's
  stdin, stdout and stderr pipe ends attached (SCM_RIGHTS);
- zygote -> app: ``{"pid": <pid>}`` at once (its process group, for codejail's time limit),
  then ``{"status": <returncode as subprocess reports it>}`` when the run has ended.

It exits after ``IDLE_SECONDS`` without a connection, and whenever its slot is recovered
(``kill -9 -1`` as the slot's user).
"""
import json
import os
import pwd
import resource
import runpy
import socket
import sys
import traceback

# Imported once here, instead of by every run. ``json`` and ``six`` are codejail's wrapper's.
PRELOAD = ("json", "six", "random", "numpy")
# Set before the preload, as the LMS prolog does before it imports numpy (TNL-6456): OpenBLAS
# must not start a thread per core in a process that forks, under a tight RLIMIT_NPROC.
PRELOAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
IDLE_SECONDS = 600
MAX_MESSAGE = 64 * 1024


def main():
    if os.geteuid() == 0:
        sys.exit("codejail zygote: refusing to run as root")
    site_packages = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.remove(os.path.dirname(os.path.abspath(__file__)))  # the script's own directory
    sys.path.append(site_packages)
    import site  # noqa: PLC0415 -- -S: site runs now, once the layer knows it must not confine

    import codejail_confinement as layer  # noqa: PLC0415

    # The .pth hook (site) must not confine the zygote itself: each run confines its child.
    layer.STATUS["mode"] = "zygote"
    site.main()  # what a fresh run's start does: the venv's prefix (the layer's rules), site-packages
    config = layer.load_config()
    # Confined before it imports anything (docs/decisions/0007-warm-sandbox.rst).
    layer.confine_zygote(config, pwd.getpwuid(os.getuid()).pw_name)
    run_env = dict(os.environ)
    os.environ.update(PRELOAD_ENV)
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError as exc:
            print(f"codejail zygote: not preloading {name}: {exc}", file=sys.stderr)
    listener = socket.socket(fileno=os.dup(0))
    listener.settimeout(IDLE_SECONDS)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return
        with conn:
            conn.settimeout(None)
            try:
                serve(conn, listener, layer, config, run_env)
            except OSError as exc:  # the app went away mid-run: the next connection is another run
                print(f"codejail zygote: {exc!r}", file=sys.stderr)


def serve(conn, listener, layer, config, run_env):
    """One run: fork it, tell the app its pid, wait for it, tell the app its status."""
    message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
    try:
        request = json.loads(message)
        if len(fds) != 3:
            raise ValueError(f"expected 3 descriptors, got {len(fds)}")
    except ValueError as exc:
        for fd in fds:
            os.close(fd)
        conn.send(json.dumps({"error": str(exc)}).encode())
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the run (tests/test_zygote.py, and live)
        run(request, fds, (conn, listener), layer, config, run_env)
    for fd in fds:
        os.close(fd)
    conn.send(json.dumps({"pid": pid, "zygote": os.getpid()}).encode())
    _, wait_status = os.waitpid(pid, 0)
    conn.send(json.dumps({"status": os.waitstatus_to_exitcode(wait_status)}).encode())


def run(request, fds, sockets, layer, config, run_env):  # pragma: no cover -- in the forked child
    """In the forked child: become a fresh run, confine, run jailed_code; never returns."""
    status = 1
    try:
        for sock in sockets:
            sock.close()
        for target, fd in enumerate(fds):  # over the zygote's stdin (its listener) and stdio
            os.dup2(fd, target)
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # nothing of the zygote's
        os.setsid()  # a process group of its own, as codejail's preexec gives a fresh run
        os.chdir(request["cwd"])
        for name, soft, hard in request["rlimits"]:
            resource.setrlimit(name, (soft, hard))
        os.environ.clear()
        os.environ.update(run_env, TMPDIR="tmp")  # as sudo gives a fresh run (env_keep TMPDIR)
        layer.confine_or_exit(config, forked_by="zygote")  # as the .pth hook: or refuse, run nothing
        status = run_jailed_code()
    except BaseException:  # noqa: BLE001 -- the zygote's own failure: say it where the app looks
        os.write(2, f"codejail zygote: the run could not start:\n{traceback.format_exc()}".encode())
    finally:
        os._exit(status)


def run_jailed_code():  # pragma: no cover -- in the forked child
    """As ``python jailed_code`` would: fresh stdio, fresh seeds, exit status and traceback."""
    import random  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    random.seed()  # os.urandom, not the zygote's state
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
    tempfile.tempdir = None  # from TMPDIR=tmp, as a fresh interpreter would find it
    # The zygote's own stdio was set up by this interpreter's start, as a fresh run's would be.
    encoding, errors = sys.__stdout__.encoding, sys.__stdout__.errors
    sys.stdin = sys.__stdin__ = open(0, encoding=encoding, errors=errors, closefd=False)
    stdout = sys.stdout = sys.__stdout__ = open(1, "w", encoding=encoding, errors=errors, closefd=False)
    stderr = sys.stderr = sys.__stderr__ = open(2, "w", encoding=encoding, errors="backslashreplace",
                                                closefd=False, buffering=1)
    sys.argv = ["jailed_code"]
    sys.path.insert(0, os.getcwd())  # as for a script: its directory first
    status = 0
    try:
        runpy.run_path("jailed_code", run_name="__main__")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    except BaseException:  # noqa: BLE001 -- as the interpreter: print it, exit 1
        traceback.print_exc()
        status = 1
    # Ours, whatever the code put in sys.stdout (codejail's wrapper writes to sys.__stdout__).
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except OSError:
            status = status or 120  # as the interpreter, when it cannot flush at exit
    return status


if __name__ == "__main__":
    main()
