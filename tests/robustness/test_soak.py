"""
Soak: many mixed runs at once against the live service, about 10 % of them hostile.

``CODEJAIL_SOAK_RUNS`` (default 300: the CI run; ``make soak`` does 5,000) requests at
``CODEJAIL_SOAK_CONCURRENCY`` (8) in flight. Each answer is checked against what its code must
give. Reports errors, answers shed with 503 + Retry-After (the admission limit; retried), RSS
drift per worker, and leaked fds (but sockets), run directories and processes; fails on any error or leak.
"""
import concurrent.futures
import io
import json
import os
import random
import subprocess
import threading
import time
import zipfile

import requests
from live.aftermath import fds_between_runs, rss_mib, run_dirs, service_pids
from live.conftest import WARM, ZYGOTE_MAX_RUNS, sandbox_processes, sandbox_users, zygotes

RUNS = int(os.environ.get("CODEJAIL_SOAK_RUNS", "300"))
CONCURRENCY = int(os.environ.get("CODEJAIL_SOAK_CONCURRENCY", "8"))
HOSTILE_SHARE = 0.10
RSS_DRIFT_BOUND_MIB = 25
PROLOG = "import os\nos.environ['OPENBLAS_NUM_THREADS'] = '1'\n"


def _lib():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("helpers.py", "def triple(v):\n    return 3 * v\n")
    return buf.getvalue()


LIB = _lib()


def _ok(expected):
    def check(body):
        return "emsg" not in body and all(body["globals_dict"].get(k) == v for k, v in expected.items())
    return check


def _failed_with(fragment):
    return lambda body: fragment in body.get("emsg", "") and "globals_dict" in body


# (name, code, globals, with python_lib.zip, check(body)); normal jobs get their i as input.
NORMAL = [
    ("arithmetic", "y = x * 2 + 1", lambda i: {"x": i}, False, lambda i: _ok({"y": 2 * i + 1})),
    ("text", "s = t[::-1] + 'é𝄞'", lambda i: {"t": f"ab{i}"}, False, lambda i: _ok({"s": f"ab{i}"[::-1] + "é𝄞"})),
    ("exception", "raise ValueError('nope %d' % x)", lambda i: {"x": i}, False,
     lambda i: _failed_with(f"ValueError: nope {i}")),
    ("numpy", PROLOG + "import numpy\ny = int(numpy.arange(x + 1).sum())", lambda i: {"x": i % 50}, False,
     lambda i: _ok({"y": sum(range(i % 50 + 1))})),
    ("python_lib", "import helpers\ny = helpers.triple(x)", lambda i: {"x": i}, True, lambda i: _ok({"y": 3 * i})),
]
HOSTILE = [
    ("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
    ("thread_bomb", "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(2,)).start()"),
    ("memory_bomb", "b = []\nwhile True:\n    b.append(bytearray(32 * 1024 * 1024))"),
    ("busy_loop", "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"),
    ("sleep_past_realtime", "import time\ntime.sleep(30)"),
    ("lingering_child", "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nr = 1"),
    ("output_flood", "import os\nwhile True:\n    os.write(1, b'x' * 65536)"),
    ("file_flood", "for i in range(1000):\n    open('tmp/f%d' % i, 'w').close()"),
    ("protocol_break", "import sys\nsys.__stdout__.write('not json')\nsys.__stdout__.flush()\nr = 1"),
]


def _plan(seed=7):
    rng = random.Random(seed)
    jobs = []
    for i in range(RUNS):
        if rng.random() < HOSTILE_SHARE:
            name, code = rng.choice(HOSTILE)
            jobs.append((name, code, {"i": i}, False, lambda body: "globals_dict" in body))
        else:
            name, code, make_globals, lib, make_check = rng.choice(NORMAL)
            jobs.append((name, code, make_globals(i), lib, make_check(i)))
    return jobs


def _post(url, job):
    """One job: (name, ok, shed count, seconds); retries answers shed with 503 + Retry-After."""
    name, code, globals_dict, lib, check = job
    payload = {"code": code, "globals_dict": globals_dict, "python_path": ["python_lib.zip"] if lib else [],
               "limit_overrides_context": None, "slug": f"soak-{name}", "unsafely": False}
    files = {"python_lib.zip": ("python_lib.zip", LIB, "application/zip")} if lib else None
    shed = 0
    start = time.monotonic()
    while True:
        try:
            response = requests.post(url + "/api/v0/code-exec", data={"payload": json.dumps(payload)},
                                     files=files, timeout=(2, 60))
        except requests.RequestException as exc:
            return name, f"request failed: {exc!r}", shed, time.monotonic() - start
        if response.status_code == 503 and "Retry-After" in response.headers and shed < 20:
            shed += 1
            time.sleep(float(response.headers["Retry-After"]))
            continue
        break
    if response.status_code != 200 or response.headers.get("Content-Type") != "application/json":
        return name, f"status {response.status_code}: {response.text[:300]}", shed, time.monotonic() - start
    body = response.json()
    return name, (None if check(body) else f"wrong answer: {json.dumps(body)[:300]}"), shed, \
        time.monotonic() - start


def _workers_state(url):
    """{worker: (RSS MiB, open fds but sockets, or None while it is in a run)}."""
    _, workers = service_pids(url)
    return {pid: (rss_mib(pid), fds_between_runs(pid)) for pid in workers}


class WorkerSampler(threading.Thread):
    """
    Every second, each worker's RSS and open fds. gunicorn recycles a worker after ~1,000
    requests (max_requests), so drift is taken per worker from its first sample after warm-up
    to its last, for every worker generation seen long enough.
    """

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.samples, self.done = url, {}, threading.Event()

    def run(self):
        while not self.done.wait(1.0):
            try:
                state = _workers_state(self.url)
            except (AssertionError, OSError, subprocess.SubprocessError):
                continue  # a worker being replaced right now
            now = time.monotonic()
            for pid, (rss, fds) in state.items():
                if rss:
                    # A worker in the middle of a run holds its slot's lock file and the run's pipes
                    # (4 descriptors): its fds are compared only between samples taken between runs.
                    self.samples.setdefault(pid, []).append((now, rss, fds))

    def drift(self, min_seconds=20):
        """{pid: (RSS drift MiB, fd drift, seconds observed)} for workers seen >= min_seconds."""
        drift = {}
        for pid, samples in self.samples.items():
            # Skip the first seconds of a worker's life: imports and caches still warming up.
            warm = [sample for sample in samples if sample[0] >= samples[0][0] + 5]
            if len(warm) >= 2 and warm[-1][0] - warm[0][0] >= min_seconds:
                idle = [sample[2] for sample in warm if sample[2] is not None]
                drift[pid] = (round(warm[-1][1] - warm[0][1], 1), idle[-1] - idle[0] if idle else 0,
                              round(warm[-1][0] - warm[0][0]))
        return drift


def test_soak(service, capsys):
    url = service["url"]
    dirs_before = run_dirs()
    # Warm every worker up (imports, caches) before the baseline.
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(lambda i: _post(url, (*NORMAL[0][:2], {"x": i}, False, lambda b: True)), range(40)))
    before = _workers_state(url)
    zygotes_before = zygotes()
    sampler = WorkerSampler(url)
    sampler.start()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        outcomes = list(pool.map(lambda job: _post(url, job), _plan()))
    elapsed = time.monotonic() - started
    time.sleep(2)  # a last sample of the idle workers
    sampler.done.set()
    sampler.join()

    after = _workers_state(url)
    deadline = time.monotonic() + 10
    while (sandbox_processes() or run_dirs() - dirs_before) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3 if ZYGOTE_MAX_RUNS else 0)  # a successor still preloading takes its place
    zygotes_after = zygotes()
    leaked_dirs = sorted(run_dirs() - dirs_before)
    leaked_procs = sandbox_processes()

    errors = [(name, error) for name, error, _, _ in outcomes if error]
    shed = sum(count for _, _, count, _ in outcomes)
    hostile = sum(1 for name, *_ in outcomes if name in {h[0] for h in HOSTILE})
    drift = sampler.drift(min_seconds=min(20, elapsed / 2))
    rss_drift = {pid: value[0] for pid, value in drift.items()}
    fd_drift = {pid: value[1] for pid, value in drift.items()}
    slowest = sorted(outcomes, key=lambda o: o[3])[-3:]
    report = {
        "runs": RUNS, "concurrency": CONCURRENCY, "hostile": hostile, "seconds": round(elapsed, 1),
        "runs_per_second": round(RUNS / elapsed, 1), "errors": len(errors), "shed_503_retried": shed,
        "rss_mib_before": {pid: round(v[0], 1) for pid, v in before.items()},
        "rss_drift_mib": rss_drift, "fd_drift": fd_drift, "observed_seconds": {p: v[2] for p, v in drift.items()},
        "rss_mib_max": round(max((s[1] for samples in sampler.samples.values() for s in samples), default=0), 1),
        "worker_generations": len(sampler.samples), "workers_recycled": len(set(before) - set(after)),
        "leaked_run_dirs": len(leaked_dirs), "leaked_processes": len(leaked_procs),
        "zygotes_before": len(zygotes_before), "zygotes_after": len(zygotes_after),
        "zygotes_replaced": len(zygotes_before - zygotes_after),
        "slowest": [(name, round(seconds, 2)) for name, _, _, seconds in slowest],
    }
    with capsys.disabled():
        print("\nsoak report: " + json.dumps(report))
    assert errors == [], errors[:10]
    assert leaked_dirs == [] and leaked_procs == [], (leaked_dirs, leaked_procs)
    if WARM and ZYGOTE_MAX_RUNS and RUNS >= 4 * len(zygotes_before) * ZYGOTE_MAX_RUNS:
        # Recycled under load, hostile runs and all: every slot's zygote was replaced, none is left over.
        assert zygotes_before and not zygotes_before & zygotes_after, (zygotes_before, zygotes_after)
        slots = [user for user in sandbox_users() if user.rpartition("-")[2].isdigit()]
        assert len(zygotes_after) == 2 * len(slots), (zygotes_before, zygotes_after)  # light and full (no spare)
    assert drift, "no worker was observed long enough to measure drift"
    # Sockets are not counted (fds_between_runs): pipes and files of runs must not pile up at all.
    assert all(value <= 0 for value in fd_drift.values()), fd_drift
    assert all(value < RSS_DRIFT_BOUND_MIB for value in rss_drift.values()), rss_drift
