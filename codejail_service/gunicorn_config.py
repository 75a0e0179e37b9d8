"""
gunicorn settings: ``gunicorn -c python:codejail_service.gunicorn_config codejail_service.wsgi``.

Environment:

- ``CODEJAIL_SERVICE_BIND``: address to listen on (default ``127.0.0.1:8550``, the LMS default).
- ``CODEJAIL_SERVICE_WORKERS``: worker processes (default 2 x CPU cores). Workers mostly wait
  for sandboxes; how many runs go at once is the size of the sandbox user pool
  (``CODEJAIL_SANDBOX_POOL_SIZE``, apps/core/admission.py), whatever the worker count.
- ``CODEJAIL_SERVICE_THREADS``: threads per worker (default 16). They hold the requests running
  or waiting for a sandbox slot, so that beyond capacity a request is answered 503 at once
  instead of waiting unseen in the listen backlog; keep it above ``CODEJAIL_ADMISSION["max_waiting"]`` + 1.
- ``CODEJAIL_SERVICE_TIMEOUT``: seconds before a silent worker is killed and replaced.
"""

import ctypes
import logging
import multiprocessing
import os

log = logging.getLogger(__name__)

bind = os.environ.get("CODEJAIL_SERVICE_BIND", "127.0.0.1:8550")

# Threaded workers: a sync worker busy with a run cannot even accept a request, so a burst
# would queue unseen in the kernel's backlog until the LMS times out. With threads, every
# request reaches the admission gate, which starts it in a free sandbox slot (each run its own
# sandbox user) and answers 503 + Retry-After beyond a short bounded wait.
worker_class = "gthread"
workers = int(os.environ.get("CODEJAIL_SERVICE_WORKERS", 2 * multiprocessing.cpu_count()))
threads = int(os.environ.get("CODEJAIL_SERVICE_THREADS", 16))

# Import the app, and so run the startup safety checks, once in the master; workers inherit
# the cached results instead of each re-running them.
preload_app = True

# Recycle workers now and then, so a slow leak cannot grow for ever; jitter keeps them from
# restarting together.
max_requests = 1000
max_requests_jitter = 100

# Well above codejail's REALTIME limit (3 s by default), which ends any single run first.
timeout = int(os.environ.get("CODEJAIL_SERVICE_TIMEOUT", 30))
graceful_timeout = 10

# gunicorn's control socket would live in $HOME; the app user has none, and we need none.
control_socket_disable = True

# Logs to stdout/stderr, for the container runtime or systemd to collect.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("CODEJAIL_SERVICE_LOG_LEVEL", "info").lower()


# --- The sandbox user pool (codejail_service/apps/core/sandbox_pool.py) ----------------------
# Each run holds a slot (a sandbox user) of the pool, whichever worker serves it; a slot is an
# flock that the kernel drops when its holder dies. When a worker is gone (e.g. killed mid-run),
# the master recovers the slots it held: kills what their users left running, removes the run
# directories. With preload_app, Django is set up in the master before any of these hooks runs.


PR_SET_CHILD_SUBREAPER = 36


def become_child_subreaper():
    """
    Adopt the orphans of our runs, so that they are reaped at once (gunicorn's master reaps
    unknown children on SIGCHLD). A run killed whole by codejail's timeout (``pkill -9 -g``)
    loses its own reaper, and its processes re-parent to PID 1; an init that reaps lazily (one
    here reaped every ~2 s) leaves them as zombies that still count against the sandbox user's
    RLIMIT_NPROC, so the worker's next run could not even fork ("Resource temporarily
    unavailable").
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("Could not become a child subreaper: %s", os.strerror(ctypes.get_errno()))


def on_starting(server):
    """Adopt orphaned run processes."""
    become_child_subreaper()


def child_exit(server, worker):
    """In the master, once a worker is gone: nothing its runs started may outlive it."""
    from codejail_service.apps.core import sandbox_pool  # noqa: PLC0415

    sandbox_pool.recover_free_slots()


def on_exit(server):
    """In the master, as the service stops: the slots' zygotes (CODEJAIL_WARM_SANDBOX) go with it."""
    from codejail_service.apps.core import sandbox_pool, warm_sandbox  # noqa: PLC0415

    if warm_sandbox.enabled():
        # Only free slots: a busy one belongs to another service sharing the pool.
        for slot in sandbox_pool.free_slots():
            sandbox_pool.kill_processes_of(slot.user)
