"""
Admission: one run per sandbox slot, a short bounded wait, and 503 beyond that.

The LMS gives up on an answer after 3.5 s, and assignment deadlines send bursts. A request
queued behind work the service cannot finish in time is a failure that also costs the CPU its
run takes; an immediate ``503`` with ``Retry-After`` is an honest answer the caller can act on.

A run needs a free slot of the sandbox user pool (codejail_service/sandbox/pool.py): the pool's size is the
service's number of concurrent runs, shared by all gunicorn workers (gthread: their threads hold
the requests), so a request that lands on a worker busy with another run still starts at once
while any slot is free. When none is, it waits, at most ``CODEJAIL_ADMISSION["max_wait_seconds"]``
and at most ``max_waiting`` requests per worker; any other request is refused at once.
"""

import threading
import time

from django.conf import settings

from codejail_service.sandbox import pool
from codejail_service.sandbox.run import Run

# How often a waiting request looks for a free slot (slots are freed by other processes too).
POLL_SECONDS = 0.01


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

    def admit(self):
        """
        A ``Run`` holding a sandbox slot (a context manager that frees it), or raise Overloaded.

        Usage: ``with GATE.admit() as run: run_code(..., run=run)``.
        """
        config = settings.CODEJAIL_ADMISSION
        # A free slot now: no wait, no count (the common case).
        slot = pool.acquire_any()
        if slot is not None:
            return Run.in_slot(slot)
        with self._count_lock:
            if self.waiting >= config["max_waiting"]:
                raise Overloaded("queue_full", config["retry_after_seconds"])
            self.waiting += 1
        started = time.monotonic()
        try:
            while slot is None and time.monotonic() - started < config["max_wait_seconds"]:
                time.sleep(POLL_SECONDS)
                slot = pool.acquire_any()
        finally:
            with self._count_lock:
                self.waiting -= 1
        if slot is None:
            raise Overloaded(f"waited {time.monotonic() - started:.2f} s", config["retry_after_seconds"])
        return Run.in_slot(slot)


# The gate of this worker process (each gunicorn worker has its own after fork).
GATE = ExecutionGate()
