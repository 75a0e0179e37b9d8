"""
What large globals cost the service: ``make bench-globals`` (as root, after ``deploy/provision.sh``).

Any globals a request within ``CODEJAIL_MAX_REQUEST_BYTES`` (10 MiB) carries come back whole,
so a worker holds them several times over while it serves the run (the request, its parsed
payload, codejail's JSON for the sandbox's stdin, the sandbox's stdout, the parsed globals, the
answer). This starts the service as ``make run`` does, with one worker so its peak is one
request's, sends requests whose globals are one string of 1 to 9 MiB (as the LMS's client sends
them: JSON, then a multipart form), checks each comes back whole, and prints the answer time and
the worker's RSS before and its peak (VmHWM) after. Only 127.0.0.1 is contacted; nothing is
asserted.
"""
import json
import os
import sys
import tempfile
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import WorkerMemory, free_port, start_service, stop_service  # noqa: E402

MIB = 1024 * 1024


def multipart(payload):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n{payload}\r\n"
            f"--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


def status_kib(pid, field):
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def is_gunicorn(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"gunicorn" in cmdline.read()
    except OSError:
        return False


def main():
    port = free_port()
    process = start_service(port, {"CODEJAIL_SERVICE_WORKERS": "1"},
                            os.path.join(tempfile.gettempdir(), "cjbench-globals.log"))
    url = f"http://127.0.0.1:{port}/api/v0/code-exec"
    try:
        workers = [pid for pid in WorkerMemory(process.pid).workers() if is_gunicorn(pid)]
        if len(workers) != 1:
            raise SystemExit(f"expected one worker, found {workers}")
        (worker,) = workers
        print(f"{'globals MiB':>11} {'request MiB':>11} {'answer s':>8} {'RSS before MiB':>14} {'peak RSS MiB':>12}")
        for size in (0, 1, 2, 4, 6, 9):
            big = "x" * (size * MIB)
            body, content_type = multipart(json.dumps({"code": "n = len(big)", "globals_dict": {"big": big}}))
            before = status_kib(worker, "VmRSS")
            started = time.monotonic()
            request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
            with urllib.request.urlopen(request, timeout=60) as response:  # loopback only
                answer = json.load(response)
            seconds = time.monotonic() - started
            if answer.get("emsg") or answer["globals_dict"].get("big") != big:
                raise SystemExit(f"{size} MiB did not come back whole: {str(answer)[:500]}")
            print(f"{size:>11} {len(body) / MIB:>11.1f} {seconds:>8.3f} {before / 1024:>14.1f} "
                  f"{status_kib(worker, 'VmHWM') / 1024:>12.1f}", flush=True)
    finally:
        stop_service(process)


if __name__ == "__main__":
    main()
