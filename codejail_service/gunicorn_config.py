"""
gunicorn settings: ``gunicorn -c python:codejail_service.gunicorn_config codejail_service.wsgi``.

Environment:

- ``CODEJAIL_SERVICE_BIND``: address to listen on (default ``127.0.0.1:8550``, the LMS default).
- ``CODEJAIL_SERVICE_WORKERS``: worker processes (default 2 x CPU cores, but at most the size of
  the sandbox user pool). Each worker runs one sandbox at a time (apps/core/admission.py) and
  mostly waits for it. With a pool (``CODEJAIL_SANDBOX_POOL_SIZE``), each worker runs code as its
  own sandbox user, so concurrent runs do not share the host-wide NPROC limit; asking for more
  workers than the pool has users is refused at start.
- ``CODEJAIL_SERVICE_THREADS``: threads per worker (default 16). They hold the requests waiting
  for the worker's sandbox, so that beyond capacity a request is answered 503 at once instead of
  waiting unseen in the listen backlog; keep it above ``CODEJAIL_ADMISSION["max_waiting"]`` + 1.
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
# request reaches the admission gate, which lets one run at a time per worker (so one sandbox
# user per worker still holds) and answers 503 + Retry-After beyond a short bounded wait.
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
# The master gives each worker a free slot before forking it; the worker runs code as that
# slot's user; when a worker dies (e.g. killed mid-run) the master kills whatever its user left
# running before the slot is handed to the replacement. With preload_app, Django is set up
# in the master before any of these hooks runs.


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
    """Adopt orphaned run processes; fit the worker count to the pool (clamp the default, refuse an excess)."""
    from django.conf import settings  # noqa: PLC0415 -- settings are ready only after preload

    become_child_subreaper()
    size = settings.CODEJAIL_SANDBOX_POOL_SIZE
    if not size or server.num_workers <= size:
        return
    if "CODEJAIL_SERVICE_WORKERS" in os.environ:
        raise SystemExit(
            f"CODEJAIL_SERVICE_WORKERS={server.num_workers} exceeds the sandbox user pool "
            f"(CODEJAIL_SANDBOX_POOL_SIZE={size}): each worker needs its own sandbox user. "
            "Run fewer workers or provision a bigger pool (deploy/provision.sh)."
        )
    log.info("Running %d workers, one per sandbox user of the pool (not %d)", size, server.num_workers)
    server.num_workers = size


def pre_fork(server, worker):
    """In the master: give the worker about to be forked the lowest free pool slot."""
    from codejail_service.apps.core import sandbox_pool  # noqa: PLC0415

    worker.sandbox_slot = None
    if sandbox_pool.pool_users():
        used = {getattr(sibling, "sandbox_slot", None) for sibling in server.WORKERS.values()}
        worker.sandbox_slot = sandbox_pool.free_slot(used)


def post_fork(server, worker):
    """In the new worker: run every later safe_exec as this worker's own sandbox user."""
    from codejail_service.apps.core import sandbox_pool  # noqa: PLC0415

    if worker.sandbox_slot is not None:
        user = sandbox_pool.pool_users()[worker.sandbox_slot]
        sandbox_pool.use_sandbox_user(user)
        server.log.info("Worker %s runs code as sandbox user %s", worker.pid, user)


def child_exit(server, worker):
    """In the master, once a worker is gone: nothing it started may outlive it."""
    from codejail_service.apps.core import sandbox_pool  # noqa: PLC0415

    slot = getattr(worker, "sandbox_slot", None)
    if slot is not None:
        sandbox_pool.kill_processes_of(sandbox_pool.pool_users()[slot])
