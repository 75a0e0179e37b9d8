"""
How much memory one run's processes hold together, at its peak, with the reaper's watchdog
(docs/decisions/0008-default-deny-sandbox.rst): the audit's case, a run whose children each take
and touch 400 MB (RLIMIT_AS is 512 MiB per process), run the way codejail runs it (sudo as a pool
user, codejail's rlimits: NPROC 15, AS 512 MiB, CPU 1 s; REALTIME 3 s), as root.

A sampler sums RssAnon + RssShmem of every process of the sandbox user every 2 ms from outside
and prints the peak, how many children the run started, how it ended and what its stderr said.

``--buffers``: the other half of a run's memory, kernel buffers no RSS shows. Each child fills as
many socketpairs as its descriptors allow (trying to raise SO_SNDBUF first, as the second audit's
case did), and the sampler also follows how much of the host's memory is in use (MemTotal -
MemAvailable), against the bound computed from the run's limits: NPROC x run_open_files
descriptors, each a socket of net.core.wmem_default plus one buffer's overshoot.

Usage (root, after deploy/provision.sh):
python benchmarks/run_memory_bound.py [--children 14] [--mib 400] [--buffers]
"""
import argparse
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time

PREFIX = os.environ.get("CODEJAIL_PREFIX", "/opt/codejail-service")
PYTHON = f"{PREFIX}/sandbox-venv/bin/python"
RUN_DIR_PARENT = "/var/lib/codejail-service/runs/0"
USER = "codejail-sandbox-0"
APP_USER = "codejail-app"
MIB = 1024 * 1024

# The run: {children} children, each running a CHILD below, then holding what it took; the
# parent says how many it could start and waits for them.
RUN = """
import os, socket, time
started = 0
for _ in range({{children}}):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
{child}
        os._exit(0)
    started += 1
print('children started:', started, flush=True)
for _ in range(started):
    os.wait()
"""
# Each child takes and touches {mib} MiB.
MEMORY_CHILD = """\
        try:
            b = bytearray({mib} * 1024 * 1024)
        except MemoryError:
            os._exit(3)
        time.sleep(2.5)"""
# Each child fills as many socketpairs as its descriptors allow, after trying to raise SO_SNDBUF.
BUFFERS_CHILD = """\
        pairs, queued = [], 0
        while True:
            try:
                a, b = socket.socketpair()
            except OSError:
                break
            pairs.append((a, b))
            try:
                a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            except OSError:
                pass
            a.setblocking(False)
            while True:
                try:
                    queued += a.send(b"x" * 65536)
                except OSError:
                    break
        print(len(pairs), queued, flush=True)
        time.sleep(1.5)"""


def held_by(uid):
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/status", "rb") as status:
                for line in status:
                    if line.startswith((b"RssAnon:", b"RssShmem:")):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def host_memory_in_use():
    """MemTotal - MemAvailable: what the host has in use, kernel buffers included."""
    with open("/proc/meminfo", "rb") as meminfo:
        fields = {line.split(b":")[0]: int(line.split()[1]) * 1024 for line in meminfo}
    return fields[b"MemTotal"] - fields[b"MemAvailable"]


def limits():
    import resource
    os.setsid()
    for limit, value in ((resource.RLIMIT_NPROC, 15), (resource.RLIMIT_AS, 512 * MIB),
                         (resource.RLIMIT_CPU, 1), (resource.RLIMIT_FSIZE, MIB)):
        resource.setrlimit(limit, (value, value))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=14)
    parser.add_argument("--mib", type=int, default=400)
    parser.add_argument("--buffers", action="store_true", help="fill socket buffers instead of memory")
    args = parser.parse_args()
    app = pwd.getpwnam(APP_USER)
    run_dir = tempfile.mkdtemp(prefix="codejail-", dir=RUN_DIR_PARENT)
    os.mkdir(os.path.join(run_dir, "tmp"), 0o777)
    os.chmod(os.path.join(run_dir, "tmp"), 0o777)
    with open(os.path.join(run_dir, "jailed_code"), "w", encoding="utf-8") as jailed:
        child = BUFFERS_CHILD if args.buffers else MEMORY_CHILD.format(mib=args.mib)
        jailed.write(RUN.format(child=child).format(children=args.children))
    for path in (run_dir, os.path.join(run_dir, "tmp"), os.path.join(run_dir, "jailed_code")):
        os.chown(path, app.pw_uid, app.pw_gid)
    os.chmod(run_dir, 0o755)  # as codejail leaves it: the sandbox user reads jailed_code
    os.chmod(os.path.join(run_dir, "jailed_code"), 0o644)
    uid = pwd.getpwnam(USER).pw_uid
    peak, host_peak, done = [0, 0.0], [0], threading.Event()
    host_before = host_memory_in_use()
    started = time.monotonic()

    def sample():
        while not done.is_set():
            held = held_by(uid)
            if held > peak[0]:
                peak[:] = [held, time.monotonic() - started]
            host_peak[0] = max(host_peak[0], host_memory_in_use() - host_before)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        process = subprocess.run(["sudo", "-u", USER, PYTHON, "-E", "-B", "jailed_code"], cwd=run_dir,
                                 capture_output=True, preexec_fn=limits, timeout=10, check=False)
    finally:
        done.set()
        sampler.join()
        shutil.rmtree(run_dir, ignore_errors=True)
    asked = "socket buffers filled" if args.buffers else f"{args.mib} MB asked"
    print(f"run: {args.children} children, {asked}; status {process.returncode} after "
          f"{time.monotonic() - started:.2f} s")
    if args.buffers:
        counts = [line.split() for line in process.stdout.decode().splitlines() if line[:1].isdigit()]
        with open("/proc/sys/net/core/wmem_default", encoding="ascii") as wmem:
            socket_bytes = int(wmem.read())
        bound = 15 * 64 * (socket_bytes + 65536)
        print(f"socketpairs: {sum(int(pairs) for pairs, _ in counts)} in {len(counts)} children, "
              f"{sum(int(queued) for _, queued in counts) / MIB:.0f} MiB queued; host memory in use rose by "
              f"up to {host_peak[0] / MIB:.0f} MiB (bound: NPROC 15 x 64 descriptors x "
              f"({socket_bytes} + 65536) bytes = {bound / MIB:.0f} MiB)")
    else:
        print(f"stdout: {process.stdout.decode().strip()}")
    print(f"stderr: {process.stderr.decode().strip()[-300:]}")
    print(f"peak held by the run's processes together: {peak[0] / MIB:.0f} MiB at {peak[1]:.2f} s "
          f"(bound: 2 x VMEM = {2 * 512} MiB)")


if __name__ == "__main__":
    main()
