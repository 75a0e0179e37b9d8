"""
What the warm sandbox saves per run (docs/decisions/0007-warm-sandbox.rst): the shipped zygote
(codejail_service/confinement/zygote.py, as provisioned in the sandbox venv) against fresh
interpreters, outside the service.

Today every run is a fresh interpreter: ``sudo -u <slot user> <python> -E -B jailed_code``,
whose .pth hook applies our confinement layer before the code runs. With the warm sandbox, the
slot's zygote (numpy, json, six already imported) forks a child per run, which applies the very
same layer before it reads ``jailed_code``. Both variants run the same jailed code in the same
kind of run directory, interleaved, as the same slot user. Wall time is the median per run. CPU
is the mean per run (user + system): of sudo and everything under it for a fresh run; for the
zygote, what it and the runs it reaped used over all its runs (/proc counts in clock ticks, too
coarse for one run).

Usage (root, after deploy/provision.sh): python benchmarks/zygote_cost.py [--runs 200]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from confinement_cost import CASES, SANDBOX_USER, SANDBOX_VENV, SITE, make_run_dir, one_run

ZYGOTE_SCRIPT = f"{SANDBOX_VENV}/{SITE}/codejail_confinement/zygote.py"

FLOOR = ["/usr/bin/python3.11", "-E", "-B", "-c", "import json, sys"]


def start_zygote(user, socket_dir):
    """The provisioned zygote as ``user``, its listening socket as stdin (as the service starts it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        listener.bind(os.path.join(socket_dir, "zygote.sock"))
        listener.listen(1)
        return subprocess.Popen(
            ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
             f"{SANDBOX_VENV}/bin/python", "-E", "-B", "-S", ZYGOTE_SCRIPT],
            stdin=listener, stdout=subprocess.DEVNULL, env={}, cwd="/")


# The zygote's PID, as it says with every run: its first process exits at once (zygote.py, main).
ZYGOTE = {}


def zygote_cpu():
    """CPU seconds the zygote and the runs it reaped have used so far."""
    with open(f"/proc/{ZYGOTE['pid']}/stat", "rb") as stat:
        utime, stime, cutime, cstime = map(int, stat.read().rsplit(b")", 1)[1].split()[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def zygote_run(socket_dir, run_dir, stdin):
    """One run forked by the zygote, spoken to as sandbox/zygote_client.py does: its wall time."""
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.connect(os.path.join(socket_dir, "zygote.sock"))
        (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
        socket.send_fds(conn, [json.dumps({"cwd": run_dir, "rlimits": []}).encode()], [in_r, out_w, err_w])
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        reply = json.loads(conn.recv(4096))
        assert "pid" in reply
        ZYGOTE["pid"] = reply["zygote"]
        with os.fdopen(in_w, "wb") as run_in, os.fdopen(out_r, "rb") as run_out, os.fdopen(err_r, "rb") as run_err:
            run_in.write(stdin)
            run_in.close()
            output, errors = run_out.read(), run_err.read()
        status = json.loads(conn.recv(4096))["status"]
    elapsed = time.perf_counter() - start
    if status != 0 or json.loads(output).get("x") != 17:
        raise RuntimeError(f"zygote run: status {status}, stderr {errors[-500:]!r}")
    return elapsed


def floor_cpu(runs):
    """CPU of one fresh floor interpreter (the make bench floor's command), median."""
    cpus = []
    for _ in range(runs):
        before = os.times()
        subprocess.run(FLOOR, check=True)
        after = os.times()
        cpus.append((after.children_user - before.children_user) + (after.children_system - before.children_system))
    return statistics.median(cpus)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    run_dir = make_run_dir()
    socket_dir = tempfile.mkdtemp(prefix="zygote-bench.")
    zygote = start_zygote(SANDBOX_USER, socket_dir)
    try:
        rows = []
        for case, (code, globals_dict) in CASES.items():
            stdin = json.dumps([code, globals_dict]).encode()
            fresh, forked = [], []
            one_run(f"{SANDBOX_VENV}/bin/python", run_dir, stdin)  # warm up (and the zygote's imports)
            zygote_run(socket_dir, run_dir, stdin)
            cpu_before = zygote_cpu()
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                fresh.append(one_run(f"{SANDBOX_VENV}/bin/python", run_dir, stdin))
                forked.append(zygote_run(socket_dir, run_dir, stdin))
            forked_cpu = (zygote_cpu() - cpu_before) / args.runs * 1000
            rows.append((case, "wall", statistics.median(t[0] for t in fresh) * 1000,
                         statistics.median(forked) * 1000))
            rows.append((case, "cpu", statistics.mean(t[1] for t in fresh) * 1000, forked_cpu))
        floor = floor_cpu(min(args.runs, 50)) * 1000
        print(f"sandbox run cost: {args.runs} interleaved runs each, as {SANDBOX_USER}, confinement layer on in "
              "both (wall: median; cpu: mean, user + system of the whole run)")
        print(f"{'case':<9} {'measure':<8} {'fresh ms':>9} {'zygote ms':>10} {'fresh/zygote':>13}")
        for case, measure, fresh_ms, forked_ms in rows:
            print(f"{case:<9} {measure:<8} {fresh_ms:9.1f} {forked_ms:10.1f} {fresh_ms / forked_ms:13.2f}")
        print(f"floor interpreter ({' '.join(FLOOR[:3])} -c ...): {floor:.1f} ms CPU")
    finally:
        zygote.wait(10)  # its first process
        if "pid" in ZYGOTE:
            os.kill(ZYGOTE["pid"], signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
