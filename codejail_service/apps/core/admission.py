"""
Admission: one run per sandbox slot, a short bounded wait, and 503 beyond that.

The LMS gives up on an answer after 3.5 s, and assignment deadlines send bursts. A request
queued behind work the service cannot finish in time is a failure that also costs the CPU its
run takes; an immediate ``503`` with ``Retry-After`` is an honest answer the caller can act on.

A run needs a free slot of the sandbox user pool (codejail_service/sandbox/pool.py): the pool's size is the
service's number of concurrent runs, shared by all gunicorn workers (gthread: their threads hold
the requests), so a request that lands on a worker busy with another run still starts at once
while any slot is free. When none is (or others already wait), it waits in line (``pool.Place``:
the oldest request of every worker takes the next free slot, so no request waits while younger
ones start) as long as its answer can still reach the LMS in time:
``CODEJAIL_ADMISSION["deadline_seconds"]`` (the LMS's 3.5 s), less what the request has spent
already and what a run takes here (the 90th percentile of this worker's recent runs, at least
``MIN_RUN_SECONDS``); at most ``max_waiting`` requests per worker wait. Any other request is
refused at once.
"""

import collections
import threading
import time

from django.conf import settings

from codejail_service.sandbox import pool
from codejail_service.sandbox.run import Run

# How often a waiting request looks for a free slot (slots are freed by other processes too).
POLL_SECONDS = 0.01
# The runs a worker's estimate of a run's time is taken from, and its floor (also its value
# before any run has been seen): a request never waits into the last quarter second.
RECENT_RUNS = 64
MIN_RUN_SECONDS = 0.25


class Overloaded(Exception):
    """No run can start soon enough: answer 503 with Retry-After."""

    def __init__(self, reason, retry_after):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ExecutionGate:
    """Hands out runs in sandbox slots; a bounded number of this worker's requests may wait for one."""

    def __init__(self):
        self._count_lock = threading.Lock()
        self.waiting = 0
        self._run_seconds = collections.deque(maxlen=RECENT_RUNS)

    def ran(self, run):
        """``run`` is over: its time feeds the estimate of how long a run takes."""
        self._run_seconds.append(run.seconds)

    def expected_run_seconds(self):
        """The 90th percentile of this worker's recent runs' times, at least ``MIN_RUN_SECONDS``."""
        recent = sorted(self._run_seconds)
        return max(MIN_RUN_SECONDS, recent[int(0.9 * (len(recent) - 1))] if recent else 0.0)

    def admit(self, received=None):
        """
        A ``Run`` holding a sandbox slot (a context manager that frees it), or raise Overloaded.
        ``received``: when the request began (``time.monotonic()``), which its wait counts from.

        Usage: ``with GATE.admit(received) as run: run_code(..., run=run)``.
        """
        config = settings.CODEJAIL_ADMISSION
        # A free slot now, and nobody waiting for one: no wait, no count (the common case).
        slot = None if pool.in_line() else pool.acquire_any()
        if slot is not None:
            return Run.in_slot(slot)
        with self._count_lock:
            if self.waiting >= config["max_waiting"]:
                raise Overloaded("queue_full", config["retry_after_seconds"])
            self.waiting += 1
        started = time.monotonic()
        budget = config["deadline_seconds"] - (started - (received or started)) - self.expected_run_seconds()
        try:
            # In line, every worker's requests together: the oldest takes the next free slot.
            with pool.Place() as place:
                while time.monotonic() - started < budget:
                    if place.first() and (slot := pool.acquire_any()) is not None:
                        break
                    time.sleep(POLL_SECONDS)
        finally:
            with self._count_lock:
                self.waiting -= 1
        if slot is None:
            raise Overloaded(f"waited {time.monotonic() - started:.2f} s", config["retry_after_seconds"])
        return Run.in_slot(slot, waited=time.monotonic() - started)


# The gate of this worker process (each gunicorn worker has its own after fork).
GATE = ExecutionGate()
