"""
What the side channels our layer leaves open carry between two concurrent runs in different slots
(docs/decisions/0010-side-channels-between-runs.rst): a sender run and a receiver run, started
together through the real service, agree on a wall-clock schedule of bit slots; the sender
signals a pseudo-random bit pattern, the receiver decodes it. Prints, per channel, the slot length,
the bits sent, the error rate, and the capacity of a binary symmetric channel of that error rate
(bits per second). Also whether runs share a hash seed and address-space layout (warm sandbox).

Channels: the global inode counter of pipes and sockets (``pipe_inodes``), pid allocation seen
through stat() of /proc/<pid> (``pids``), and POSIX write locks on /dev/null (``devnull_lock``).

Usage (root, after deploy/provision.sh; starts the service like the live suite):
.venv/bin/python benchmarks/side_channels.py [--bits 48] [--fresh]
"""
import argparse
import concurrent.futures
import json
import math
import os
import random
import sys
import time

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Common to both sides: wait for the slot schedule (start, slot seconds, bit count from globals).
SCHEDULE = """
import os, time
def slot_bounds(i):
    return start + i * slot, start + (i + 1) * slot
def wait_until(t):
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.0005))
def send_busy(burst):
    # For each 1 bit, burst() over and over for most of its slot; idle for a 0.
    for i, bit in enumerate(bits):
        begin, end = slot_bounds(i)
        wait_until(begin)
        while bit and time.time() < end - slot * 0.1:
            burst()
"""

CHANNELS = {
    # Sender: a pipe per inode (the kernel's get_next_ino, shared by every pipe, socket, anon inode
    # of the host, in per-CPU batches of 1024). Receiver: its own pipes' numbers, in each slot;
    # what it did not take itself, others did.
    "pipe_inodes": {
        "send": """
def burst():
    for _ in range(200):
        r, w = os.pipe(); os.close(r); os.close(w)
send_busy(burst)
""",
        "receive": """
counts = []
for i in range(len(bits)):
    begin, end = slot_bounds(i)
    wait_until(begin + slot * 0.15)
    r, w = os.pipe(); first = os.fstat(r).st_ino; os.close(r); os.close(w)
    own = 0
    while own < 1100:  # past one batch of the receiver's CPU: its next batch shows the others'
        r, w = os.pipe(); last = os.fstat(r).st_ino; os.close(r); os.close(w); own += 1
    wait_until(end - slot * 0.15)
    r, w = os.pipe(); last = os.fstat(r).st_ino; os.close(r); os.close(w); own += 1
    counts.append(last - first - own)
""",
        "threshold": 1000,
    },
    # Sender: short-lived threads, each a pid. Receiver: the ids of two threads of its own, at the
    # start and the end of each slot (stat() of /proc/<pid>, which Landlock does not check, shows
    # the same, and whose the pids are).
    "pids": {
        "send": """
import _thread
def burst():
    lock = _thread.allocate_lock(); lock.acquire()
    _thread.start_new_thread(lock.release, ())
    lock.acquire()
send_busy(burst)
""",
        "receive": """
import threading
def next_pid():
    t = threading.Thread(target=lambda: None); t.start(); t.join()
    return t.native_id
counts = []
for i in range(len(bits)):
    begin, end = slot_bounds(i)
    wait_until(begin + slot * 0.1)
    first = next_pid()
    wait_until(end - slot * 0.1)
    counts.append(next_pid() - first - 1)
""",
        "threshold": 3,
    },
    # Sender: a write lock on /dev/null (the one device node every run may open for writing).
    # Receiver: whether it can take the same lock.
    "devnull_lock": {
        "send": """
import fcntl
null = open('/dev/null', 'w')
for i, bit in enumerate(bits):
    begin, end = slot_bounds(i)
    wait_until(begin)
    if bit:
        fcntl.lockf(null, fcntl.LOCK_EX)
        wait_until(end - slot * 0.2)
        fcntl.lockf(null, fcntl.LOCK_UN)
""",
        "receive": """
import fcntl
null = open('/dev/null', 'w')
counts = []
for i in range(len(bits)):
    begin, end = slot_bounds(i)
    wait_until(begin + slot * 0.4)
    try:
        fcntl.lockf(null, fcntl.LOCK_EX | fcntl.LOCK_NB); fcntl.lockf(null, fcntl.LOCK_UN); counts.append(0)
    except OSError:
        counts.append(1)
""",
        "threshold": 1,
    },
}

# What a run can tell of the process that started it: the hash seed and where things are mapped.
LAYOUT = ("import ctypes\nseed_view = hash('codejail side channel')\n"
          "layout = [id(None), ctypes.addressof(ctypes.c_int.in_dll(ctypes.pythonapi, 'Py_OptimizeFlag'))]\n")


def capacity(error_rate):
    """Bits per channel use of a binary symmetric channel with this error rate."""
    if error_rate in (0, 1):
        return 1.0
    entropy = -error_rate * math.log2(error_rate) - (1 - error_rate) * math.log2(1 - error_rate)
    return 1 - entropy


def measure(run, name, slot, bits_count):
    channel = CHANNELS[name]
    bits = [random.getrandbits(1) for _ in range(bits_count)]
    start = time.time() + 0.6  # both runs are started (a fresh interpreter needs ~0.3 s) by then
    shared = {"bits": bits, "start": start, "slot": slot}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        sender = pool.submit(run, SCHEDULE + channel["send"], shared)
        receiver = pool.submit(run, SCHEDULE + channel["receive"], {**shared, "bits": [0] * bits_count})
        sent, received = sender.result(), receiver.result()
    if sent.emsg or received.emsg:
        return {"channel": name, "slot_ms": slot * 1000, "error": (sent.emsg or received.emsg)[-300:]}
    counts = received.globals["counts"]
    decoded = [int(count >= channel["threshold"]) for count in counts]
    errors = sum(a != b for a, b in zip(bits, decoded, strict=True))
    rate = errors / bits_count
    return {"channel": name, "slot_ms": slot * 1000, "bits": bits_count, "error_rate": round(rate, 3),
            "bits_per_second": round(capacity(rate) / slot, 1),
            "counts_for_1": sorted(c for c, b in zip(counts, bits, strict=True) if b)[:3],
            "counts_for_0": sorted((c for c, b in zip(counts, bits, strict=True) if not b), reverse=True)[:3]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--fresh", action="store_true", help="fresh interpreters (CODEJAIL_WARM_SANDBOX false)")
    parser.add_argument("--channels", default=",".join(CHANNELS), help="comma-separated, of: " + ", ".join(CHANNELS))
    args = parser.parse_args()
    if args.fresh:
        os.environ["CODEJAIL_LIVE_WARM"] = "0"
    from tests.live import conftest  # the live suite's service (deploy/serve.sh), as root

    with conftest.running_service() as service:
        def run(code, globals_dict):
            payload = {"code": code, "globals_dict": globals_dict, "python_path": None,
                       "limit_overrides_context": None, "slug": "side-channels", "unsafely": False}
            response = requests.post(service["url"] + "/api/v0/code-exec", data={"payload": json.dumps(payload)},
                                     timeout=(0.5, 30))
            return conftest.Result(response)

        results = []
        for name, slots in (("devnull_lock", (0.005, 0.002)), ("pids", (0.02, 0.01)),
                            ("pipe_inodes", (0.02, 0.01))):
            if name not in args.channels.split(","):
                continue
            for slot in slots:
                results.append(measure(run, name, slot, args.bits))
                print(json.dumps(results[-1]), flush=True)
        layouts = [run(LAYOUT, {}).globals for _ in range(8)]
        distinct = {json.dumps([g.get("seed_view"), g.get("layout")]) for g in layouts}
        print(json.dumps({"layout": "8 runs", "distinct_seed_and_layout": len(distinct),
                          "mode": "fresh" if args.fresh else "warm"}), flush=True)


if __name__ == "__main__":
    main()
