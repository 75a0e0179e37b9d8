"""
How long a run killed at its REALTIME limit takes to be answered: ``make bench-timeout`` (as
root, after ``deploy/provision.sh``).

The LMS reads with a 3.5 s timeout (``CODE_JAIL_REST_SERVICE_READ_TIMEOUT``): a run that codejail
kills at ``REALTIME`` (3 s by default) must be answered before it, or the student gets "service
unavailable" instead of the time-limit message. This starts the service as ``make run`` does
(fresh interpreters, then the warm sandbox), and times, from the request to the answer:

- ``sleep``: ``time.sleep(30)``, killed at REALTIME;
- ``cpu+sleep``: 0.8 s of CPU, then ``time.sleep(30)``: the kill lands while the other slots
  burn the machine's cores;

one at a time (c=1) and with as many at once as the pool has slots (capacity). It prints each
cell's min / p50 / max and the margin left under 3.5 s by the slowest answer. Only 127.0.0.1 is
contacted. Nothing is asserted: this prints.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_port, start_service, stop_service  # noqa: E402

LMS_READ_TIMEOUT = 3.5
SCENARIOS = {
    "sleep": "import time\ntime.sleep(30)\n",
    "cpu+sleep": "import time\nend = time.process_time() + 0.8\nwhile time.process_time() < end:\n    pass\n"
                 "time.sleep(30)\n",
}


def answer_seconds(url, code):
    """Seconds from sending ``code`` to its answer; the answer must be codejail's -9."""
    data = urllib.parse.urlencode({"payload": json.dumps({"code": code, "globals_dict": {}})}).encode()
    started = time.monotonic()
    with urllib.request.urlopen(url + "/api/v0/code-exec", data=data, timeout=30) as response:
        body = json.load(response)
    seconds = time.monotonic() - started
    if "status code: -9" not in body.get("emsg", ""):
        raise SystemExit(f"not a time-limit kill: {body}")
    return seconds


def pool_size():
    with open("/etc/codejail-service/config.yml", encoding="utf-8") as config:
        for line in config:
            if line.startswith("CODEJAIL_SANDBOX_POOL_SIZE:"):
                return int(line.split(":")[1])
    return 1


def measure(url, code, concurrency, rounds):
    times = []
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for _ in range(rounds):
            times += list(pool.map(lambda _: answer_seconds(url, code), range(concurrency)))
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per cell (c answers each)")
    args = parser.parse_args(argv)
    capacity = pool_size()
    print(f"REALTIME 3 s (the default); LMS read timeout {LMS_READ_TIMEOUT} s; pool of {capacity}; "
          f"{os.cpu_count()} cores", flush=True)
    print(f"{'mode':<8} {'scenario':<10} {'c':>2} {'n':>3} {'min s':>6} {'p50 s':>6} {'max s':>6} {'margin s':>9}")
    for mode in ("fresh", "warm"):
        config_dir = tempfile.mkdtemp(prefix="cjbench-cfg.")
        os.chmod(config_dir, 0o755)
        config = os.path.join(config_dir, "config.yml")
        shutil.copy("/etc/codejail-service/config.yml", config)
        if mode == "warm":
            with open(config, "a", encoding="utf-8") as extra:
                extra.write("\nCODEJAIL_WARM_SANDBOX: true\n")
        os.chmod(config, 0o644)
        port = free_port()
        process = start_service(port, {"CODEJAIL_SERVICE_CFG": config, "CODEJAIL_SERVICE_WORKERS": "4"},
                                os.path.join(tempfile.gettempdir(), "cjbench-timeout.log"))
        try:
            url = f"http://127.0.0.1:{port}"
            answer_seconds(url, SCENARIOS["sleep"])  # warm-up: first runs of each worker
            for scenario, code in SCENARIOS.items():
                for concurrency in (1, capacity):
                    times = measure(url, code, concurrency, args.rounds)
                    print(f"{mode:<8} {scenario:<10} {concurrency:>2} {len(times):>3} {min(times):6.3f} "
                          f"{statistics.median(times):6.3f} {max(times):6.3f} {LMS_READ_TIMEOUT - max(times):9.3f}",
                          flush=True)
        finally:
            stop_service(process)
            shutil.rmtree(config_dir)


if __name__ == "__main__":
    main()
