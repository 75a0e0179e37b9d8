"""
Admission: one run at a time per worker, a short bounded wait, and 503 beyond that.

The LMS gives up on an answer after 3.5 s, and assignment deadlines send bursts. A request
queued behind work the service cannot finish in time is a failure that also costs the CPU its
run takes; an immediate ``503`` with ``Retry-After`` is an honest answer the caller can act on.

Each gunicorn worker (gthread: its threads hold the requests) runs one sandbox at a time, so a
worker's sandbox user from the pool (``sandbox_pool``) never has two runs at once. Requests for
a busy worker wait for it, at most ``CODEJAIL_ADMISSION["max_wait_seconds"]`` and at most
``max_waiting`` of them; any other request is refused at once.
"""

import threading
import time

from django.conf import settings


class Overloaded(Exception):
    """This worker cannot start the run soon enough: answer 503 with Retry-After."""

    def __init__(self, reason, retry_after):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ExecutionGate:
    """One run at a time in this process; a bounded number of requests may wait for their turn."""

    def __init__(self):
        self._run_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.waiting = 0

    def admit(self):
        """
        Wait for this process's turn to run (a context manager), or raise Overloaded.

        Usage: ``with GATE.admit(): run_code(...)``.
        """
        config = settings.CODEJAIL_ADMISSION
        # Free now: no wait, no count (the common case, and always with sync workers).
        if self._run_lock.acquire(blocking=False):
            return _Turn(self._run_lock)
        with self._count_lock:
            if self.waiting >= config["max_waiting"]:
                raise Overloaded("queue_full", config["retry_after_seconds"])
            self.waiting += 1
        try:
            started = time.monotonic()
            got_it = self._run_lock.acquire(timeout=config["max_wait_seconds"])
        finally:
            with self._count_lock:
                self.waiting -= 1
        if not got_it:
            raise Overloaded(f"waited {time.monotonic() - started:.2f} s", config["retry_after_seconds"])
        return _Turn(self._run_lock)


class _Turn:
    """Holds the run lock until the ``with`` block ends."""

    def __init__(self, lock):
        self._lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._lock.release()


# The one gate of this worker process (each gunicorn worker has its own after fork).
GATE = ExecutionGate()
