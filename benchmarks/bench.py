"""
Load benchmark for codejail-service: ``make bench`` (as root, after ``deploy/provision.sh``).

Starts the service the way ``make run`` does (``deploy/serve.sh``, gunicorn as the app user,
our confinement on), on a free local port, and drives ``POST /api/v0/code-exec`` with a small
asyncio client that opens a new connection per request, as the LMS does (connect timeout 0.5 s,
read timeout 3.5 s: a later answer counts as an error; after a 503 a client waits as
Retry-After says). For each scenario and concurrency it
prints execs/s, p50/p95/p99 latency, 503s (load shed), errors, the largest worker RSS and the
CPU per request: of the workers, of their children (sudo and fresh sandbox interpreters) and of
the warm sandbox's zygotes with the runs they forked; and each zygote's RSS and PSS.

Scenarios, one per kind of course problem: ``trivial`` (``x = x + 1``, bare); and, each sent
exactly as the LMS sends a course's code (its prolog and lazy imports, benchmarks/lms_prolog.py):
``lms`` (a customresponse grader), ``numpy``, ``matplotlib`` (a plot to PNG), ``scipy_opt``,
``scipy_stats``, ``sympy`` (a formula check with simplify) and ``chem`` (chemcalc).

In the same run it measures the floor: fresh ``python3.11 -E -B -c 'import json, sys'``
interpreters started back to back, two at a time (before and after the load; the mean is
used), and prints every throughput as a ratio to it, so figures from noisy or different
machines can be compared. Results also go to a JSON file (``--json``).

Only 127.0.0.1 is ever contacted. No figure here is asserted: this prints, it does not test.
"""
import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

from lms_prolog import wrap as lms_wrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOR_COMMAND = ["/usr/bin/python3.11", "-E", "-B", "-c", "import json, sys"]
SANDBOX_PYTHON = "/opt/codejail-service/sandbox-venv/bin/python"
CONNECT_TIMEOUT = 0.5  # the LMS's (xmodule/capa/safe_exec/remote_exec.py)
READ_TIMEOUT = 3.5

# The LMS's own prolog and lazy imports (benchmarks/lms_prolog.py, from xblocks-contrib 0.13.1):
# every scenario but "trivial" is sent exactly as the LMS sends a course's code.

# A customresponse-style grader: compare the student's answer with the expected one.
LMS_GRADER = '''
def check(expect, ans):
    try:
        return abs(float(ans) - float(expect)) <= 1e-6 * max(1.0, abs(float(expect)))
    except ValueError:
        return False

answers = [random.randint(1, 6) for _ in range(3)]
cfn_return = {"ok": check(expect, ans), "msg": "Checked %d answers" % len(answers)}
'''

NUMPY_CODE = '''
import numpy as np
a = np.arange(1.0, 101.0).reshape(10, 10)
det = float(np.linalg.det(a @ a.T + np.eye(10)))
x = int(np.sum(np.arange(x)))
'''

MATPLOTLIB_CODE = '''
import io
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([1, 2, 3], [2, 1, 3])
buf = io.BytesIO()
fig.savefig(buf, format="png")
plt.close(fig)
png_bytes = len(buf.getvalue())
'''

# A grader that fits the student's parameter, and one that checks a probability (scipy, through
# the LMS's lazy ``scipy`` for stats, as course code often does, and imported for optimize).
SCIPY_OPTIMIZE_CODE = '''
from scipy import optimize
best = optimize.minimize_scalar(lambda t: (t - 2.5) ** 2 + 1.0)
root = optimize.brentq(lambda t: t ** 3 - 2 * t - 5, 2, 3)
ok = abs(best.x - 2.5) < 1e-4 and abs(root - 2.0945514815) < 1e-6
'''

SCIPY_STATS_CODE = '''
p = float(scipy.stats.norm.cdf(1.96))
t = scipy.stats.ttest_1samp([5.1, 4.9, 5.3, 5.0, 4.8], 5.0)
ok = abs(p - 0.975) < 1e-3 and 0 < float(t.pvalue) <= 1
'''

# A formula response: is the student's expression the expected one?
SYMPY_CODE = '''
import sympy
x, y = sympy.symbols("x y")
student = sympy.sympify(ans)
ok = sympy.simplify(student - sympy.sympify(expect)) == 0 and sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2) == 1
'''

# A chemical equation response, through the LMS's lazy ``chemcalc`` (chem.chemcalc).
CHEM_CODE = '''
ok = chemcalc.chemical_equations_equal(ans, expect) and not chemcalc.chemical_equations_equal(ans, "H2 + O2 -> H2O")
'''


# name -> (code, globals, check(globals_dict) -> bool)
SCENARIOS = {
    "trivial": ("x = x + 1", {"x": 16}, lambda g: g.get("x") == 17),
    "lms": (lms_wrap(LMS_GRADER), {"expect": "42", "ans": "42.0"},
            lambda g: g.get("cfn_return", {}).get("ok") is True),
    "numpy": (lms_wrap(NUMPY_CODE), {"x": 10}, lambda g: g.get("x") == 45 and g.get("det", 0) > 0),
    "matplotlib": (lms_wrap(MATPLOTLIB_CODE), {}, lambda g: g.get("png_bytes", 0) > 1000),
    "scipy_opt": (lms_wrap(SCIPY_OPTIMIZE_CODE), {}, lambda g: g.get("ok") is True),
    "scipy_stats": (lms_wrap(SCIPY_STATS_CODE), {}, lambda g: g.get("ok") is True),
    "sympy": (lms_wrap(SYMPY_CODE), {"ans": "(x + y)**2 - 2*x*y", "expect": "x**2 + y**2"},
              lambda g: g.get("ok") is True),
    "chem": (lms_wrap(CHEM_CODE), {"ans": "2H2 + O2 -> 2H2O", "expect": "2H2 + O2 -> 2H2O"},
             lambda g: g.get("ok") is True),
}


def multipart_request(host, port, code, globals_dict):
    """The bytes of one LMS-style request: multipart form with the JSON payload field."""
    payload = json.dumps({"code": code, "globals_dict": globals_dict, "python_path": [],
                          "limit_overrides_context": None, "slug": "bench", "unsafely": False})
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n"
            f"{payload}\r\n--{boundary}--\r\n").encode()
    head = (f"POST /api/v0/code-exec HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


async def one_request(host, port, request, check):
    """Send one request on a new connection. Returns (outcome, seconds, response bytes)."""
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
    except (TimeoutError, OSError):
        return "connect_error", time.perf_counter() - start, 0
    try:
        writer.write(request)
        raw = await asyncio.wait_for(read_answer(reader), READ_TIMEOUT - (time.perf_counter() - start))
    except TimeoutError:
        return "timeout", time.perf_counter() - start, 0
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return "io_error", time.perf_counter() - start, 0
    finally:
        writer.close()
    elapsed = time.perf_counter() - start
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return "bad_response", elapsed, len(raw)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if status == 503 and "retry-after" in headers:
        return "shed", elapsed, len(raw), headers["retry-after"]
    if status != 200:
        return f"http_{status}", elapsed, len(raw)
    try:
        if "chunked" in headers.get("transfer-encoding", ""):
            body = dechunk(body)
        answer = json.loads(body)
    except ValueError:
        return "bad_json", elapsed, len(raw)
    if "emsg" in answer:
        return "emsg", elapsed, len(raw), answer["emsg"][:400]
    outcome = "ok" if check(answer.get("globals_dict", {})) else "wrong_result"
    return outcome, elapsed, len(raw), None, server_timing(headers.get("server-timing", ""))


async def read_answer(reader):
    """
    An HTTP answer, read as the LMS's client (requests) reads one: to the end of its body (its
    Content-Length, or its last chunk), not to the connection's close, which the service may
    close later (it ends the run's processes once it has answered: sandbox/run.py).
    """
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return head + await reader.readexactly(int(value))
        if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            body = b""
            while not body.endswith(b"\r\n0\r\n\r\n") and body != b"0\r\n\r\n":
                chunk = await reader.read(65536)
                if not chunk:
                    break
                body += chunk
            return head + body
    return head + await reader.read(-1)


def server_timing(value):
    """
    The service's ``Server-Timing`` header as ``{name: number}``: each stage's milliseconds
    (``dur``) to the answer.
    """
    metrics = {}
    for metric in filter(None, (part.strip() for part in value.split(","))):
        name, *params = (param.strip() for param in metric.split(";"))
        for param in params:
            key, _, number = param.partition("=")
            try:
                metrics[name] = float(number.strip('"'))
            except ValueError:
                pass
    return metrics


def dechunk(body):
    """The payload of a chunked HTTP body (gunicorn chunks answers that carry no Content-Length)."""
    out = bytearray()
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        body = rest[size + 2:]


async def drive(host, port, request, check, concurrency, duration):
    """Closed loop: `concurrency` clients, each sending requests back to back for `duration` s."""
    results = []
    deadline = time.perf_counter() + duration

    async def client():
        while time.perf_counter() < deadline:
            result = await one_request(host, port, request, check)
            results.append(result)
            if result[0] == "shed":
                # As a polite client would (and a student resubmitting): wait as told, so the
                # load stays what the clients offer instead of a storm of instant retries.
                await asyncio.sleep(min(float(result[3]), max(0.0, deadline - time.perf_counter())))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results, time.perf_counter() - start


def percentile(values, fraction):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(fraction * (len(values) - 1))))]


def measure_floor(duration, parallel=2):
    """Fresh interpreters per second, `parallel` at a time, back to back; and CPU ms for each."""
    count = [0] * parallel
    deadline = time.perf_counter() + duration

    def loop(i):
        while time.perf_counter() < deadline:
            subprocess.run(FLOOR_COMMAND, check=True)
            count[i] += 1

    start = time.perf_counter()
    cpu_start = _children_cpu()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(count) / (time.perf_counter() - start), (_children_cpu() - cpu_start) * 1000 / max(1, sum(count))


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class WorkerMemory:
    """Samples the RSS of the gunicorn master's children (the workers) in the background."""

    def __init__(self, master_pid, interval=0.1):
        self.master_pid = master_pid
        self.interval = interval
        self.max_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def workers(self):
        pids = []
        try:
            for tid in os.listdir(f"/proc/{self.master_pid}/task"):
                with open(f"/proc/{self.master_pid}/task/{tid}/children", encoding="ascii") as children:
                    pids += [int(pid) for pid in children.read().split()]
        except OSError:
            pass
        return [pid for pid in pids if not _is_zygote(pid)]  # the master starts the zygotes too

    def rss_kib(self):
        """{pid: RSS in KiB} of the workers now."""
        sizes = {}
        for pid in self.workers():
            try:
                with open(f"/proc/{pid}/status", encoding="ascii") as status:
                    for line in status:
                        if line.startswith("VmRSS:"):
                            sizes[pid] = int(line.split()[1])
            except OSError:
                pass
        return sizes

    def cpu_seconds(self):
        """{pid: (own CPU, CPU of waited-for children: sudo, the sandboxes)} of the workers, in s."""
        times = {}
        tick = os.sysconf("SC_CLK_TCK")
        for pid in self.workers():
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as stat_file:
                    fields = stat_file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime stime cutime cstime are fields 14-17 of stat(5); [0] here is field 3.
            times[pid] = ((int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick)
        return times

    def _run(self):
        while not self._stop.wait(self.interval):
            sizes = self.rss_kib()
            if sizes:
                self.max_kib = max(self.max_kib, max(sizes.values()))

    def __enter__(self):
        self.max_kib = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


ZYGOTE_CMDLINE_END = b"codejail_confinement/zygote.py\0"


class Zygotes:
    """
    The warm sandbox's zygotes on this host (CODEJAIL_WARM_SANDBOX), two a slot (light and full):
    a process with the zygote's command line in its parent's session (a run's processes take a
    session of their own), but for the full one's spare (a zygote's child's child: it becomes
    the next run). Their CPU, with that of the runs they reaped, is the runs' CPU, which the
    workers' children's CPU misses. The spares' memory is in the pod's.
    """

    @staticmethod
    def pids():
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                        found[int(entry)] = cmdline.read().endswith(ZYGOTE_CMDLINE_END)
                except OSError:
                    pass
        zygotes = {pid for pid, is_zygote in found.items() if is_zygote and _in_parents_session(pid)}
        return [pid for pid in zygotes if _stat_field(_stat_field(pid, 1), 1) not in zygotes]

    @classmethod
    def cpu_seconds(cls):
        """{pid: CPU s of the zygote and of the runs it reaped}."""
        tick = os.sysconf("SC_CLK_TCK")
        times = {}
        for pid in cls.pids():
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as stat_file:
                    fields = stat_file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            times[pid] = sum(int(field) for field in fields[11:15]) / tick
        return times

    @classmethod
    def memory_mib(cls):
        """{pid: (RSS, PSS) in MiB}, of each zygote."""
        sizes = {}
        for pid in cls.pids():
            try:
                with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
                    fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup if line.split()[-1] == "kB"}
            except OSError:
                continue
            sizes[pid] = (round(fields["Rss"] / 1024, 1), round(fields["Pss"] / 1024, 1))
        return sizes


def pod_memory_mib(master_pid):
    """(RSS, PSS) MiB summed over ``master_pid`` and every process below it: what a pod holds."""
    pids, pending = [], [master_pid] if master_pid else []
    while pending:
        pid = pending.pop()
        pids.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as children:
                    pending += [int(child) for child in children.read().split()]
        except OSError:
            pass
    # The zygotes left their first process at once: gunicorn's master adopted them (a subreaper).
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
                fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup if line.split()[-1] == "kB"}
        except OSError:
            continue
        rss, pss = rss + fields["Rss"], pss + fields["Pss"]
    return round(rss / 1024, 1), round(pss / 1024, 1)


def _is_zygote(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().endswith(ZYGOTE_CMDLINE_END)
    except OSError:
        return False


def _in_parents_session(pid):
    session = _stat_field(pid, 3)
    return session is not None and session == _stat_field(_stat_field(pid, 1), 3)


def _stat_field(pid, index):
    """Field ``index`` after the command in /proc/<pid>/stat (1: ppid, 3: session), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat_file:
            return int(stat_file.read().rsplit(")", 1)[1].split()[index])
    except (OSError, TypeError):
        return None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(port, extra_env, log_path, attempts=3):
    """
    Start deploy/serve.sh and wait for /health/ 200: the startup checks passed, so our
    confinement is on. A service whose checks failed (e.g. another suite had just switched the
    layer off on this shared host, as `make test-sabotage` does) is restarted, a few times.
    """
    env = {**os.environ, "CODEJAIL_SERVICE_BIND": f"127.0.0.1:{port}", **extra_env}
    url = f"http://127.0.0.1:{port}/health/"
    for attempt in range(1, attempts + 1):
        # The service's log (access log included) goes to a file, not to our terminal.
        with open(log_path, "ab") as log:
            process = subprocess.Popen(["bash", os.path.join(REPO, "deploy", "serve.sh")], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the service exited with status {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
                    if response.status == 200:
                        return process
            except OSError:
                pass
            time.sleep(0.3)
        stop_service(process)
        print(f"/health/ did not pass (attempt {attempt} of {attempts}); see {log_path}", flush=True)
    raise SystemExit(f"/health/ did not pass; see {log_path}")


def stop_service(process):
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_cell(host, port, scenario, concurrency, duration, memory, log_path=None):
    code, globals_dict, check = SCENARIOS[scenario]
    request = multipart_request(host, port, code, globals_dict)
    cpu_before = memory.cpu_seconds()
    zygotes_before = Zygotes.cpu_seconds()
    log_offset = os.path.getsize(log_path) if log_path else None
    with memory:
        results, elapsed = asyncio.run(drive(host, port, request, check, concurrency, duration))
    time.sleep(0.1)  # the last runs' ends, logged after their answers
    after = after_the_answer(log_path, log_offset) if log_path else []
    cpu_after = memory.cpu_seconds()
    zygotes_after = Zygotes.cpu_seconds()
    outcomes = {}
    samples = {}  # one emsg per cell, to see what failed
    for outcome, *rest in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome not in ("shed", "ok") and len(rest) > 2:
            samples.setdefault(outcome, rest[2])
    latencies = [result[1] for result in results]
    ok_latencies = [result[1] for result in results if result[0] == "ok"]
    errors = {k: v for k, v in outcomes.items() if k not in ("ok", "shed")}
    return {
        "scenario": scenario,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "requests": len(results),
        "ok": outcomes.get("ok", 0),
        "shed_503": outcomes.get("shed", 0),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "error_samples": samples,
        "execs_per_s": outcomes.get("ok", 0) / elapsed,
        # Every answer (503s included: they are answers too); None when nothing came back.
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p95_ms": _ms(percentile(latencies, 0.95)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "ok_p50_ms": _ms(percentile(ok_latencies, 0.50)),
        "max_response_bytes": max((result[2] for result in results), default=0),
        "max_worker_rss_mib": round(memory.max_kib / 1024, 1),
        # CPU per answered request (503s count as requests), less noisy than throughput on a
        # shared host.
        "app_cpu_ms_per_request": _cpu_per_request(cpu_before, cpu_after, 0, len(results)),
        "sandbox_cpu_ms_per_request": _cpu_per_request(cpu_before, cpu_after, 1, len(results)),
        # The warm sandbox: what the slots' zygotes and their runs used, per request (None when a
        # zygote was replaced during the cell: the one gone took its share along).
        "zygote_cpu_ms_per_request": (
            round(sum(zygotes_after[pid] - zygotes_before[pid] for pid in zygotes_after) * 1000 / len(results), 1)
            if results and zygotes_after and set(zygotes_before) == set(zygotes_after) else None),
        "zygotes_replaced": len(set(zygotes_after) - set(zygotes_before)),
        "stages_p50_ms": {**stages_p50([result for result in results if result[0] == "ok"]),
                          **medians(after, AFTER_STAGES + COUNTS)},
    }


# What a run does after its answer, which the service logs (sandbox/run.py, Run.release): the
# stages, and what the run's processes used as its zygote counted it (warm runs only).
AFTER_STAGES = ("leftovers", "cleanup", "release")
AFTER_LINE = re.compile(r"ended after its answer: (.*)$")


def after_the_answer(log_path, offset):
    """``[{name: number}]``, one per run that ended in the service's log since ``offset``."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        lines = log.read().decode("utf-8", "replace").splitlines()
    ended = []
    for line in lines:
        match = AFTER_LINE.search(line)
        if match:
            figures = {}
            for part in match.group(1).split(","):
                name, _, value = part.strip().partition(" ")
                try:
                    figures[name] = float(value.split()[0])
                except (ValueError, IndexError):
                    pass
            ended.append(figures)
    return ended


def medians(figures, names):
    """The median of each of ``names`` over ``figures`` (dicts), where any has it."""
    found = {}
    for name in names:
        values = [figure[name] for figure in figures if name in figure]
        if values:
            found[name] = round(percentile(values, 0.5), 2)
    return found


# The stages of a run to its answer (Server-Timing: sandbox/run.py), in order; "http" is the rest
# of what the client waited: connection, HTTP parsing, Django, the view's checks, codejail's
# reading of the globals, JSON.
STAGES = ("admit", "prepare", "start", "run")
COUNTS = ("cpu-ms", "faults", "reap-ms")


def stages_p50(ok_results):
    """The median of each stage (ms) to the answer and of ``http`` (the rest), over ``ok_results``."""
    timings = [(result[1] * 1000, result[4]) for result in ok_results if len(result) > 4 and result[4]]
    if not timings:
        return {}
    found = medians([timing for _, timing in timings], STAGES)
    found["http"] = round(percentile([total - sum(timing.get(name, 0) for name in STAGES)
                                      for total, timing in timings], 0.5), 2)
    return found


def _cpu_per_request(before, after, index, count):
    """CPU ms per request, or None when a worker was recycled during the cell (its share is lost)."""
    if not count or not before or set(before) != set(after):
        return None
    return round(sum(after[pid][index] - before[pid][index] for pid in after) * 1000 / count, 1)


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


def print_table(cells):
    print(f"\nratio: execs/s over the floor, fresh `{' '.join(FLOOR_COMMAND)}` per s (two at a time),"
          " measured before and after each scenario. p50/p95/p99 over all answers (503s too);"
          " app/sbx ms: CPU per request of the workers / of their children (sudo, sandbox);"
          " zyg ms: of the warm sandbox's zygotes and the runs they forked (new: zygotes replaced).\n")
    header = (f"{'scenario':<11}{'c':>4}{'execs/s':>9}{'floor':>7}{'ratio':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
              f"{'ok':>7}{'503':>6}{'err':>5}{'RSS MiB':>9}{'app ms':>8}{'sbx ms':>8}{'zyg ms':>8}{'new':>4}")
    print(header)
    print("-" * len(header))
    for cell in cells:
        print(f"{cell['scenario']:<11}{cell['concurrency']:>4}{cell['execs_per_s']:>9.1f}"
              f"{cell['floor_per_s']:>7.1f}{cell['ratio_to_floor']:>7.2f}{_fmt(cell['p50_ms'])}{_fmt(cell['p95_ms'])}"
              f"{_fmt(cell['p99_ms'])}{cell['ok']:>7}{cell['shed_503']:>6}{cell['errors']:>5}"
              f"{cell['max_worker_rss_mib']:>9.1f}{_fmt(cell['app_cpu_ms_per_request'], 8)}"
              f"{_fmt(cell['sandbox_cpu_ms_per_request'], 8)}{_fmt(cell['zygote_cpu_ms_per_request'], 8)}"
              f"{cell['zygotes_replaced']:>4}")
        if cell["error_kinds"]:
            print(f"{'':15}errors: {cell['error_kinds']}")
            for sample in cell["error_samples"].values():
                print(f"{'':15}e.g. {sample[:200]!r}")


def print_stages(cells, own):
    """Where a run's time goes (medians), and the service's share beside the code's own cost."""
    print("\nwhere a run's time goes, ms (medians of answered runs: Server-Timing; admit: the wait for a slot; "
          "start: the zygote's fork or a fresh interpreter's spawn; run: the code to its answer (a warm run's: "
          "its status, said before its process exits); http: the rest, HTTP, Django and codejail). After the "
          "answer, from the service's log, not waited for: leftovers (its processes' exit and reaping, and the check "
          "that none is left), cleanup (its files), release (of its slot); cpu/faults/reap: the run's processes' "
          "CPU ms and page faults, and the zygote's ms to end the run once its process had exited, warm only. "
          "own: the code in a warm interpreter (no service); added: p50 - own.\n")
    header = (f"{'scenario':<11}{'c':>4}{'p50':>8}{'own':>7}{'added':>7}{'http':>7}"
              + "".join(f"{name:>9}" for name in STAGES + AFTER_STAGES + COUNTS))
    print(header)
    print("-" * len(header))
    for cell in cells:
        stages = cell.get("stages_p50_ms", {})
        own_ms = own.get(cell["scenario"])
        added = None if own_ms is None or cell["ok_p50_ms"] is None else cell["ok_p50_ms"] - own_ms
        cell["own_p50_ms"], cell["added_p50_ms"] = own_ms, added
        print(f"{cell['scenario']:<11}{cell['concurrency']:>4}{_fmt(cell['ok_p50_ms'], 8)}{_fmt(own_ms, 7)}"
              f"{_fmt(added, 7)}{_fmt(stages.get('http'), 7)}"
              + "".join(_fmt(stages.get(name), 9) for name in STAGES + AFTER_STAGES + COUNTS))


def measure_own_cost(scenarios, runs=30):
    """
    Each scenario's code, as the service receives it, in an interpreter that has already imported
    what the zygote preloads (the sandbox venv's own Python, no service, no confinement): its
    p50 ms, the cost no service can take away (benchmarks/own_cost.py).
    """
    command = [SANDBOX_PYTHON, "-E", "-B", os.path.join(REPO, "benchmarks", "own_cost.py"), str(runs)]
    cases = {name: {"code": SCENARIOS[name][0], "globals": SCENARIOS[name][1]} for name in scenarios}
    try:
        done = subprocess.run(command, input=json.dumps(cases), capture_output=True, text=True, check=True,
                              timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"could not measure the code's own cost: {exc}", flush=True)
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


class Profile:
    """
    ``perf record -a -g`` while a cell runs (root; the kernel's symbols too), then the share of
    the samples of each process name (a run's process is ``python-zygote``, as its zygote; the
    workers ``gunicorn``) and, within those two, the symbols that took most: copy_page_range is
    a fork, unmap_page_range an exit, do_wp_page and copy_mc_* copy-on-write faults,
    _PyEval_EvalFrameDefault the interpreter itself.
    """

    TOP = 12

    def __init__(self, scenario, concurrency):
        self.path = os.path.join(REPO, ".cache", "bench", f"perf-{scenario}-c{concurrency}.data")
        self.process = None

    def __enter__(self):
        self.process = subprocess.Popen(["perf", "record", "-a", "-g", "-q", "-o", self.path],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf has opened its buffers
        return self

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)

    def report(self):
        by_process = self._report(["--sort", "comm"])
        by_symbol = {comm: self._report(["--comms", comm, "--sort", "sym"]) for comm in ("python-zygote", "gunicorn")}
        print(f"    perf: share of all samples by process: {by_process[:6]}")
        for comm, symbols in by_symbol.items():
            print(f"    perf: {comm}, top symbols (share of all samples): {symbols[:self.TOP]}")
        return {"by_process": by_process, "by_symbol": by_symbol, "data": self.path}

    def _report(self, sort):
        try:
            out = subprocess.run(["perf", "report", "-i", self.path, "--no-children", "-g", "none", "--stdio",
                                  "--percent-limit", "0.3", *sort], capture_output=True, text=True, check=True,
                                 timeout=300).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        rows = []
        for line in out.splitlines():
            parts = line.split()
            if not parts or line.startswith("#") or not parts[0].endswith("%"):
                continue
            rows.append((parts[-1], float(parts[0].rstrip("%"))))
        return rows


def _fmt(value, width=9):
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--concurrency", default="1,4,8,32,64", help="comma-separated client counts")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per scenario and concurrency")
    parser.add_argument("--floor-seconds", type=float, default=4.0, help="seconds per floor measurement")
    parser.add_argument("--url", help="bench a running service (http://127.0.0.1:PORT) instead of starting one")
    parser.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the started service (e.g. CODEJAIL_SERVICE_WORKERS=6)")
    parser.add_argument("--json", default=os.path.join(REPO, ".cache", "bench", "latest.json"),
                        help="where to write the results")
    parser.add_argument("--label", default="", help="free text stored with the results")
    parser.add_argument("--perf", action="store_true",
                        help="profile each scenario's first cell with perf (system-wide, call graphs): "
                             "where the CPU goes, by process and symbol, kernel included (make bench-profile)")
    args = parser.parse_args(argv)

    scenarios = [s for s in args.scenarios.split(",") if s]
    for scenario in scenarios:
        if scenario not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r}")
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    extra_env = dict(item.split("=", 1) for item in args.service_env)

    process = None
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    if args.url:
        host, port = args.url.split("://", 1)[1].rstrip("/").rsplit(":", 1)
        port = int(port)
        master_pid = log_path = None
    else:
        if os.geteuid() != 0:
            raise SystemExit("bench starts the service as the app user: run it as root (make bench)")
        host, port = "127.0.0.1", free_port()
        log_path = os.path.join(os.path.dirname(os.path.abspath(args.json)), "service.log")
        print(f"starting the service on {host}:{port} (log: {log_path})", flush=True)
        process = start_service(port, extra_env, log_path)
        master_pid = process.pid
    memory = WorkerMemory(master_pid) if master_pid else WorkerMemory(-1)

    cells = []
    floors = []  # one before each scenario and one at the end: this host's load may drift
    floor_cpus = []  # CPU ms of one floor interpreter, measured along
    try:
        rss_start = memory.rss_kib()
        zygote_memory_start = Zygotes.memory_mib()
        for scenario in scenarios:
            print(f"measuring the floor, then {scenario} ...", flush=True)
            floor, floor_cpu = measure_floor(args.floor_seconds)
            floors.append(floor)
            floor_cpus.append(floor_cpu)
            # Warm up: the first runs of a scenario fill the page cache.
            run_cell(host, port, scenario, 2, 1.0, memory, log_path)
            for index, concurrency in enumerate(concurrencies):
                profile = Profile(scenario, concurrency) if args.perf and index == 0 else None
                with profile or contextlib.nullcontext():
                    cell = run_cell(host, port, scenario, concurrency, args.duration, memory, log_path)
                if profile is not None:
                    cell["profile"] = profile.report()
                cell["floor_index"] = len(floors) - 1
                cells.append(cell)
                print(f"  {scenario:<11} c={concurrency:<3} {cell['execs_per_s']:6.1f} execs/s  "
                      f"p50 {cell['p50_ms']} ms  p99 {cell['p99_ms']} ms  503s {cell['shed_503']}  "
                      f"errors {cell['errors']}", flush=True)
        rss_end = memory.rss_kib()
        zygote_memory_end = Zygotes.memory_mib()
        pod_memory = pod_memory_mib(master_pid)
        floor, floor_cpu = measure_floor(args.floor_seconds)
        floors.append(floor)
        floor_cpus.append(floor_cpu)
    finally:
        if process is not None:
            stop_service(process)

    for cell in cells:
        # The floor measured just before and just after this scenario's cells.
        i = cell.pop("floor_index")
        cell["floor_per_s"] = round((floors[i] + floors[i + 1]) / 2, 2)
        cell["ratio_to_floor"] = round(cell["execs_per_s"] / cell["floor_per_s"], 3)
        cell["floor_cpu_ms"] = round((floor_cpus[i] + floor_cpus[i + 1]) / 2, 1)
        cell["execs_per_s"] = round(cell["execs_per_s"], 2)
    print_table(cells)
    print("measuring each scenario's own cost in a warm interpreter ...", flush=True)
    print_stages(cells, measure_own_cost(scenarios))
    print(f"\nfloor measurements (per s, in order): {[round(f, 1) for f in floors]}, CPU ms per floor "
          f"interpreter: {[round(c, 1) for c in floor_cpus]}; worker RSS MiB "
          f"at start {_mib(rss_start)}, at end {_mib(rss_end)}")
    print(f"zygotes (RSS, PSS) MiB at start {sorted(zygote_memory_start.values())}, "
          f"at end {sorted(zygote_memory_end.values())}")
    print(f"the pod (gunicorn's master and every process below it: workers, zygotes), at the end: "
          f"RSS {pod_memory[0]} MiB, PSS {pod_memory[1]} MiB")
    result = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "label": args.label,
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": sys.version.split()[0],
                 "loadavg_at_end": os.getloadavg()},
        "service_env": extra_env,
        "floor": {"command": FLOOR_COMMAND, "parallel": 2, "seconds_each": args.floor_seconds,
                  "per_s": [round(f, 2) for f in floors], "cpu_ms_each": [round(c, 2) for c in floor_cpus]},
        "worker_rss_kib": {"start": rss_start, "end": rss_end},
        "zygote_rss_pss_mib": {"start": zygote_memory_start, "end": zygote_memory_end},
        "pod_rss_pss_mib_at_end": pod_memory,
        "cells": cells,
    }
    with open(args.json, "w", encoding="utf-8") as out:
        json.dump(result, out, indent=2)
    print(f"results: {args.json}")


def _mib(sizes):
    return sorted(round(kib / 1024, 1) for kib in sizes.values())


if __name__ == "__main__":
    main()
