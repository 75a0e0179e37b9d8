"""
What sandboxed code may and may not do. Each test_deny_* has a test_allow_* twin
next to it: the nearest allowed action, so a deny test cannot pass for the wrong
reason (a typo, a missing module). The sabotage run (conftest.py) proves the same
from the other side.
"""
import concurrent.futures
import time

import pytest

from .conftest import CANARY_NAME, sandbox_processes
from .probe import probe

# --- Reading files ------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/hostname", "/proc/1/cmdline", "/proc/self/environ",
                                  "/opt/codejail-service/venv/pyvenv.cfg"])
def test_deny_read_system_files(run, path):
    assert probe(run, f"open({path!r}, 'rb').read()") == "EACCES"


def test_allow_read_sandbox_venv_and_stdlib(run):
    assert probe(run, """
        import os, sys
        open(os.path.join(sys.prefix, "pyvenv.cfg"), "rb").read()
        open(os.__file__, "rb").read()
        open("/sys/devices/system/cpu/possible").read()
    """) == "ok"


def test_allow_read_own_run_files(run):
    assert probe(run, "open('jailed_code', 'rb').read()") == "ok"


# --- Listing directories --------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/tmp", "/sys", "/proc", "..", "/home", "/etc"])
def test_deny_list_directories(run, path):
    assert probe(run, f"import os; os.listdir({path!r})") == "EACCES"


def test_allow_list_run_directory(run):
    assert probe(run, "import os; assert 'jailed_code' in os.listdir('.'); os.listdir('tmp')") == "ok"


# --- Writing files ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/tmp/codejail-live-escape", "/var/tmp/codejail-live-escape",
                                  "/dev/shm/codejail-live-escape"])
def test_deny_write_outside_run_dir(run, service, path):
    # (In the sabotage run the write succeeds: remove the file again.) A container may run on a
    # read-only root filesystem (make test-image does), where the kernel answers EROFS before
    # Landlock is asked; /tmp stays writable there (a tmpfs), so our layer's EACCES is still proved.
    denied = {"EACCES"} if service["local"] or path.startswith("/tmp/") else {"EACCES", "EROFS"}
    assert probe(run, f"import os; open({path!r}, 'w').write('x'); os.remove({path!r})") in denied


def test_allow_write_in_run_tmp(run):
    assert probe(run, """
        import os
        with open("tmp/out.txt", "w") as f:
            f.write("hello")
        os.mkdir("tmp/sub"); os.rename("tmp/out.txt", "tmp/sub/out.txt")
        assert open("tmp/sub/out.txt").read() == "hello"
    """) == "ok"


def test_deny_symlink_in_run_tmp(run):
    # Nothing to plant for codejail's cleanup (find ... -exec rm -rf) to follow.
    assert probe(run, "import os; os.symlink('/etc', 'tmp/etc')") == "EACCES"


def test_allow_mkfifo_in_run_tmp(run):
    assert probe(run, "import os; os.mkfifo('tmp/fifo'); os.remove('tmp/fifo')") == "ok"


@pytest.mark.outside_layer  # RLIMIT_FSIZE
def test_deny_file_over_fsize(run):
    result = run("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                 "open('tmp/big', 'wb').write(b'x' * (2 * 1024 * 1024))")
    assert result.emsg and "File too large" in result.emsg, result


def test_allow_file_under_fsize(run):
    assert probe(run, "open('tmp/small', 'wb').write(b'x' * (512 * 1024))") == "ok"


# --- Running programs -------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["/usr/bin/true"], ["ls", "/"], ["ps", "aux"], ["python3", "-c", "pass"],
                                  ["/bin/sh", "-c", "true"]])
def test_deny_exec_programs(run, argv):
    assert probe(run, f"import subprocess; subprocess.run({argv!r})") == "EACCES", argv


def test_deny_exec_sandbox_python_itself(run):
    assert probe(run, "import subprocess, sys; subprocess.run([sys.executable, '-c', 'pass'])") == "EACCES"


def test_deny_exec_through_the_dynamic_loader(run):
    assert probe(run, "import os; os.execv('/lib64/ld-linux-x86-64.so.2', "
                      "['ld.so', '/usr/bin/true'])") == "EACCES"


def test_allow_fork_and_wait(run):
    assert probe(run, """
        import os
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 7
    """) == "ok"


# --- Network ------------------------------------------------------------------------------

@pytest.mark.parametrize("family,kind", [("AF_INET", "SOCK_STREAM"), ("AF_INET", "SOCK_DGRAM"),
                                         ("AF_INET6", "SOCK_STREAM"), ("AF_INET6", "SOCK_DGRAM"),
                                         ("AF_NETLINK", "SOCK_RAW"), ("AF_PACKET", "SOCK_RAW")])
def test_deny_network_sockets(run, family, kind):
    assert probe(run, f"import socket; socket.socket(socket.{family}, socket.{kind})") == "EACCES"


def test_allow_unix_socketpair(run):
    assert probe(run, """
        import socket
        a, b = socket.socketpair()
        a.sendall(b"ping"); assert b.recv(4) == b"ping"
    """) == "ok"


def test_deny_dns_lookup(run):
    result = run("import socket\ntry:\n    socket.gethostbyname('localhost')\n    outcome = 'resolved'\n"
                 "except socket.gaierror as e:\n    outcome = e.errno\n")
    assert result.globals.get("outcome") == -2, result  # EAI_NONAME: "Name or service not known"


def test_allow_numeric_address_parsing(run):
    result = run("import socket\naddr = socket.getaddrinfo('127.0.0.1', 80, socket.AF_INET, "
                 "socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0][4][0]")
    assert result.globals.get("addr") == "127.0.0.1", result


def test_deny_http_to_the_service_itself(run, service):
    # SSRF: the sandbox must not reach the service (or anything else) over loopback.
    assert probe(run, "import urllib.request; urllib.request.urlopen(url + '/health/', timeout=2)",
                 globals_dict={"url": service["url"]}) in ("URLError", "EACCES")


def test_allow_http_over_a_socketpair(run):
    assert probe(run, """
        import http.server, socket, threading
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"hi")
            def log_message(self, *a): pass
        server_end, client = socket.socketpair()
        def serve():
            H(server_end, ("local", 0), None)
            server_end.close()
        t = threading.Thread(target=serve); t.start()
        client.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        data = b""
        while chunk := client.recv(1024):
            data += chunk
        t.join()
        assert data.endswith(b"hi"), data
    """) == "ok"


def test_deny_connect_to_host_unix_socket(run, host_sockets):
    # Like D-Bus or journald: a world-writable socket file of another user.
    assert probe(run, "import socket; socket.socket(socket.AF_UNIX).connect(path)",
                 globals_dict={"path": host_sockets["stream"]}) == "EACCES"


def test_deny_datagram_to_host_unix_socket(run, host_sockets):
    assert probe(run, "import socket; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'x', path)",
                 globals_dict={"path": host_sockets["dgram"]}) == "EACCES"


def test_allow_datagrams_over_a_socketpair(run):
    assert probe(run, """
        import socket
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.send(b"ping"); assert b.recv(4) == b"ping"
    """) == "ok"


def test_deny_unix_socket_bind_in_tmp(run):
    assert probe(run, "import socket, os; s = socket.socket(socket.AF_UNIX); "
                      "s.bind('/tmp/codejail-live.sock'); os.remove('/tmp/codejail-live.sock')") == "EACCES"


def test_deny_unix_socket_bind_in_run_tmp(run):
    # bind() is refused whatever the address: an abstract name would be squatted host-wide, and
    # a run has no use for a listening socket (its nearest allowed twin: socketpair above).
    assert probe(run, "import socket; s = socket.socket(socket.AF_UNIX); s.bind('tmp/ok.sock')") == "EACCES"


def test_deny_unix_socket_abstract_name(run):
    assert probe(run, "import socket; s = socket.socket(socket.AF_UNIX); s.bind('\\0codejail-squat')") == "EACCES"


def test_deny_unix_socket_listen_autobind(run):
    assert probe(run, "import socket; s = socket.socket(socket.AF_UNIX); s.listen()") == "EACCES"


# --- Environment ------------------------------------------------------------------------------

@pytest.mark.outside_layer  # codejail starts the sandbox with an empty environment
def test_deny_env_leak_canary(run):
    result = run(f"import os\nleaked = [k for k in os.environ if {CANARY_NAME!r} in k]")
    assert result.globals.get("leaked") == [], result


def test_allow_env_codejail_sets(run):
    result = run("import os\ntmpdir = os.environ.get('TMPDIR')")
    assert result.globals.get("tmpdir") == "tmp", result


# --- Other processes ---------------------------------------------------------------------------

def test_deny_ptrace(run):
    assert probe(run, """
        import ctypes, os, time
        pid = os.fork()
        if pid == 0:
            time.sleep(2); os._exit(0)
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
        err = ctypes.get_errno()
        os.kill(pid, 9); os.waitpid(pid, 0)
        if rc != 0:
            raise OSError(err, os.strerror(err))
    """) == "EPERM"


def test_allow_ctypes_calls(run):
    result = run("import ctypes, os\nsame = ctypes.CDLL(None).getpid() == os.getpid()")
    assert result.globals.get("same") is True, result


@pytest.mark.outside_layer  # each worker's own sandbox user keeps runs apart too
def test_deny_signal_another_run(run, service):
    # Concurrent runs are kept apart twice: by a sandbox user per run (the pool), and by
    # Landlock's signal scope (tested alone in codejail_service/confinement/tests).
    if not service["local"]:
        pytest.skip("finding the other run's processes needs the service's host")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        other = pool.submit(run, "import time\ntime.sleep(2)\nr = 'survived'")
        deadline = time.monotonic() + 5
        while not sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = sandbox_processes()
        assert pids, "the other run did not start"
        outcome = probe(run, "import os, signal\nfor pid in pids:\n    os.kill(pid, signal.SIGKILL)",
                        globals_dict={"pids": pids})
        other_result = other.result()
    assert outcome == "EPERM"
    assert other_result.globals.get("r") == "survived", other_result


def test_allow_signal_own_child(run):
    assert probe(run, """
        import os, signal, time
        pid = os.fork()
        if pid == 0:
            time.sleep(5); os._exit(0)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WTERMSIG(status) == signal.SIGKILL
    """) == "ok"


@pytest.mark.parametrize("call", ["os.setsid()", "os.setpgid(0, 0)"])
def test_deny_leave_process_group(run, call):
    # codejail's timeout kills the process group: nothing may leave it. (Tried in a
    # child: the run's first process may lead its session already, refused anyway.)
    assert probe(run, f"""
        import os
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                {call}
                os.write(w, b"ok")
            except OSError as exc:
                os.write(w, str(exc.errno).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        answer = os.read(r, 16).decode()
        if answer != "ok":
            raise OSError(int(answer), "in the child")
    """) == "EPERM"


def test_allow_read_process_group(run):
    assert probe(run, "import os; assert os.getpgid(0) > 1") == "ok"


# An unprivileged process may make a user namespace, and with it the others.
@pytest.mark.parametrize("flag", [0x10000000, 0x10020000, 0x50000000])  # NEWUSER, +NEWNS, +NEWNET
@pytest.mark.parametrize("call", ["unshare", "clone"])
def test_deny_namespaces(run, call, flag):
    # clone(2) with SIGCHLD and a namespace flag; the child (if any) exits at once.
    args = f"{flag}" if call == "unshare" else f"{flag} | 17, None, None, None, None"
    number = 272 if call == "unshare" else 56
    assert probe(run, f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall({number}, {args})
        if rc == 0 and {number} == 56:
            os._exit(0)
        if rc > 0:
            os.waitpid(rc, 0)
        if rc < 0:
            err = ctypes.get_errno(); raise OSError(err, os.strerror(err))
    """) == "EPERM"


def test_allow_clone_without_namespace_flags(run):
    assert probe(run, """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(56, 17, None, None, None, None)  # clone(SIGCHLD): a plain fork
        if rc == 0:
            os._exit(0)
        assert rc > 0 and os.waitpid(rc, 0)[0] == rc
    """) == "ok"
