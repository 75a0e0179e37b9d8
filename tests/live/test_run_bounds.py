"""
What one run may take across all of its processes, beyond each process's own rlimits: CPU time
(the watchdog's run_cpu_factor x RLIMIT_CPU), kernel buffers (socket and pipe buffers keep their
default size; RLIMIT_NOFILE bounds how many), and a tmp/ tree its cleanup cannot fail on (a
failed cleanup would end the slot's zygote with it, and the slot's next runs would wait for a new
one). Each deny test sits next to the nearest allowed run; each is followed by the aftermath check.
"""
import pytest

from .conftest import WARM, zygotes
from .probe import probe
from .test_hostile import ANSWER_WITHIN, timed

CPU_BOUND_SECONDS = 3  # confinement.json's run_cpu_factor (3) x CODE_JAIL's CPU limit (1 s)
RUN_OPEN_FILES = 64  # confinement.json's run_open_files

# ``children`` children that each spin ``seconds`` of CPU (each under RLIMIT_CPU's 1 s); the
# parent collects their exit codes.
SPINNING_CHILDREN = ("import os, time\nkids = []\nfor _ in range({children}):\n    pid = os.fork()\n"
                     "    if pid == 0:\n        until = time.process_time() + {seconds}\n"
                     "        while time.process_time() < until:\n            pass\n        os._exit(0)\n"
                     "    kids.append(pid)\n"
                     "codes = sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in kids)")


def test_deny_cpu_across_processes(run, aftermath):
    """Four children of 0.9 s each: every one under RLIMIT_CPU, together over the run's 3 s."""
    result, elapsed = timed(run, SPINNING_CHILDREN.format(children=4, seconds=0.9))
    assert result.emsg and result.emsg.endswith("with status code: -24"), result  # SIGXCPU
    assert f"used more than {CPU_BOUND_SECONDS} s of CPU time together" in result.emsg, result
    assert elapsed < ANSWER_WITHIN


def test_allow_cpu_across_processes_within_the_run_bound(run, aftermath):
    result, elapsed = timed(run, SPINNING_CHILDREN.format(children=2, seconds=0.6))
    assert result.emsg is None and result.globals.get("codes") == [0, 0], result
    assert elapsed < ANSWER_WITHIN


def test_deny_raising_socket_buffers(run):
    """SO_SNDBUF up to net.core.wmem_max (4 MiB here) per socket: kernel memory no RSS shows."""
    assert probe(run, "import socket\na, b = socket.socketpair()\n"
                      "a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)") == "EPERM"


def test_deny_raising_pipe_buffers(run):
    assert probe(run, "import fcntl, os\nr, w = os.pipe()\nfcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ") == "EPERM"


def test_allow_socket_and_pipe_traffic_at_default_buffer_sizes(run):
    result = run("import fcntl, os, socket, threading\na, b = socket.socketpair()\n"
                 "sndbuf = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)\n"
                 "a.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)\n"
                 "sender = threading.Thread(target=a.sendall, args=(b'x' * (1 << 20),))\nsender.start()\n"
                 "got = 0\nwhile got < 1 << 20:\n    got += len(b.recv(65536))\nsender.join()\n"
                 "r, w = os.pipe()\npipe_size = fcntl.fcntl(w, 1032)  # F_GETPIPE_SZ")
    assert result.emsg is None, result
    assert result.globals["got"] == 1 << 20 and result.globals["sndbuf"] > 0, result
    assert result.globals["pipe_size"] == 65536, result


def test_deny_more_descriptors_than_run_open_files(run):
    assert probe(run, f"import os\nfds = [os.open(os.devnull, os.O_RDONLY) for _ in range({RUN_OPEN_FILES})]") \
        == "EMFILE"


def test_allow_descriptors_within_run_open_files(run):
    assert probe(run, "import os\nfds = [os.open(os.devnull, os.O_RDONLY) for _ in range(40)]") == "ok"


# 18 nested directories of 250-character names (deeper than PATH_MAX), a file in each, the last
# locked with a file in it: a tree that only a walk by relative names that unlocks what it finds
# removes (codejail's rm -rf cannot enter the last directory).
DEEP_TREE = ("import os\nfor level in range(18):\n    name = '%02d' % level + 'd' * 248\n    os.mkdir(name)\n"
             "    open(name[:8] + '.f', 'w').close()\n    os.chdir(name)\nopen('last', 'w').close()\n"
             "os.chmod('.', 0)\nr = 1")


def test_deny_tmp_tree_deeper_than_path_max_taking_the_slots_zygote(run, known_gap):
    """
    The reaper removes it; left behind, it outlives the run (codejail's cleanup cannot enter its
    locked end), and a cleanup that ends every process of the slot's user would end the slot's
    zygote with it. (known_gap: without the reaper, in the sabotage run, the tree is removed
    afterwards so the rest of the suite starts clean.)
    """
    before = zygotes()
    result = run("import os\nos.chdir('tmp')\n" + DEEP_TREE)
    assert result.emsg is None and result.globals.get("r") == 1, result
    known_gap.check()
    if known_gap.service["local"]:
        assert known_gap.leftovers(wait=5)[1] == set(), "the tree outlived its run"
    if WARM:
        assert zygotes() == before, "a slot's zygote was ended after the run"


def test_allow_a_shallow_tree_in_tmp(run, aftermath):
    result = run("import os\nos.makedirs('tmp/a/b/c')\nopen('tmp/a/b/c/f', 'w').close()\nr = 1")
    assert result.emsg is None and result.globals.get("r") == 1, result



# Code that writes its own answer where codejail reads the globals, and exits before codejail's
# wrapper writes them.
OWN_OUTPUT = "import os, sys\nsys.__stdout__.write({text!r})\nsys.__stdout__.flush()\nos._exit(0)"


@pytest.mark.outside_layer  # the web app's reading of a run's output
@pytest.mark.parametrize("text", ["[1, 2]", '[["x", 2]]', "7", '{"x": ' * 3000 + "1" + "}" * 3000, '{"x": '])
def test_deny_output_that_is_not_a_json_object_taking_the_internal_error_path(run, aftermath, text):
    result = run(OWN_OUTPUT.format(text=text), globals_dict={"x": 1})
    assert result.status == 200 and result.globals == {"x": 1}, result
    assert result.emsg.startswith("Couldn't execute jailed code: the sandbox's output was not the JSON object"), result


def test_allow_a_json_object_of_globals_written_by_the_code_itself(run):
    result = run(OWN_OUTPUT.format(text='{"x": 2, "y": [1]}'), globals_dict={"x": 1})
    assert result.emsg is None and result.globals == {"x": 2, "y": [1]}, result
