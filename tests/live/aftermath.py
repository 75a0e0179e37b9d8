"""
What must hold after any hostile run: the service answers, nothing is left behind.

``Aftermath.check()`` asserts: /health/ is 200, a normal run still gives the right answer, every
gunicorn worker's RSS stays under a bound, and within a few seconds no sandbox process and no
run directory made since the snapshot is left. Used by test_hostile.py and tests/robustness/.
"""
import glob
import os
import pwd
import re
import stat
import subprocess
import time

import requests

from .conftest import SABOTAGE, sandbox_processes

# A sync worker with Django, DRF and codejail loaded is ~50 MiB; a run's output is read into it.
WORKER_RSS_BOUND_MIB = 200


def service_pids(url):
    """(master PID, [worker PIDs]) of the gunicorn serving ``url`` on this host."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    pids = {int(pid) for pid in re.findall(r'\("gunicorn",pid=(\d+),', out)}
    parents = {pid: _ppid(pid) for pid in pids}
    masters = [pid for pid in pids if parents[pid] not in pids]
    assert len(masters) == 1, f"cannot tell the gunicorn master among {parents}"
    return masters[0], sorted(pid for pid in pids if parents[pid] == masters[0])


def _ppid(pid):
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return 0.0
    return 0.0


def _fd_targets(pid):
    targets = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except FileNotFoundError:
                pass  # closed meanwhile
    except FileNotFoundError:
        pass
    return targets


def holds_a_slot(pid):
    """The worker holds a sandbox slot: its lock file is open only during a run (sandbox/pool.py)."""
    return any("slots" in target and target.endswith(".lock") for target in _fd_targets(pid))


def fds_between_runs(pid):
    """
    The worker's open fds but sockets (client connections come and go): pipes, files, ...; or
    None while it is in a run (it holds its slot's lock file and the run's pipes then).
    """
    targets = _fd_targets(pid)
    if any("slots" in target and target.endswith(".lock") for target in targets):
        return None
    return sum(not target.startswith("socket:") for target in targets)


# Where codejail's run directories are made: the temp directory, or each pool slot's own tmpfs
# (CODEJAIL_RUN_DIR_ROOT, deploy/provision.sh).
RUN_DIR_GLOBS = ("/tmp/codejail-*", "/var/lib/codejail-service/runs/*/codejail-*")
NOBODY = pwd.getpwnam("nobody").pw_uid


def run_dirs():
    """
    Directories only: a file such as /tmp/codejail-host.lock (a shared host's lock) is no run's;
    nor is a directory of ``nobody``'s, which the confinement unit tests make in /tmp as they run
    beside the live suite on a shared host (confinement/tests/conftest.py's ``run_dir``).
    """
    found = set()
    for path in (path for pattern in RUN_DIR_GLOBS for path in glob.glob(pattern)):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid != NOBODY:
            found.add(path)
    return found


class Aftermath:
    """A snapshot before a hostile run; ``check()`` after it."""

    def __init__(self, run, service):
        self.run, self.service = run, service
        self.dirs_before = run_dirs() if service["local"] else set()

    def leftovers(self, wait=8.0):
        """(sandbox PIDs, new run dirs) still there after up to ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            procs, dirs = sandbox_processes(), run_dirs() - self.dirs_before
            if (not procs and not dirs) or time.monotonic() > deadline:
                return procs, dirs
            time.sleep(0.2)

    def check(self):
        health = requests.get(self.service["url"] + "/health/", timeout=10)
        # The sabotage run (confinement layer off) fails the startup checks by design.
        assert health.status_code == (503 if SABOTAGE else 200), health.text
        normal = self.run("x = x + 1", globals_dict={"x": 16})
        assert normal.status == 200 and normal.emsg is None and normal.globals == {"x": 17}, normal
        if not self.service["local"] or SABOTAGE:
            return  # without the layer's reaper, leftovers are what the layer's own tests show
        _, workers = service_pids(self.service["url"])
        rss = {pid: round(rss_mib(pid)) for pid in workers}
        assert all(value < WORKER_RSS_BOUND_MIB for value in rss.values()), f"worker RSS (MiB): {rss}"
        procs, dirs = self.leftovers()
        assert procs == [], f"sandbox processes left: {procs}"
        assert dirs == set(), f"run directories left: {sorted(dirs)}"
