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
- ``CODEJAIL_SERVICE_RECEIVE_TIMEOUT``: seconds a request has to arrive whole (its headers and
  body together), from when the worker starts waiting for it; later, it is answered 408 and closed
  (codejail_service/gunicorn_worker.py). Waiting holds no thread.
"""

import multiprocessing
import os

bind = os.environ.get("CODEJAIL_SERVICE_BIND", "127.0.0.1:8550")

# Threaded workers: a sync worker busy with a run cannot even accept a request, so a burst
# would queue unseen in the kernel's backlog until the LMS times out. With threads, every
# request reaches the admission gate, which starts it in a free sandbox slot (each run its own
# sandbox user) and answers 503 + Retry-After beyond a short bounded wait.
#
# The worker is gthread's, with a receiving front (codejail_service/gunicorn_worker.py): a thread
# takes a request only once all of it has arrived, so clients that send part of one and stall
# hold no thread, whatever their number; after receive_timeout they are dropped.
worker_class = "codejail_service.gunicorn_worker.ReceivingThreadWorker"
receive_timeout = float(os.environ.get("CODEJAIL_SERVICE_RECEIVE_TIMEOUT", 20))
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


# --- The sandbox's life in the master: codejail_service/sandbox/lifecycle.py --------------------
# With preload_app, Django is set up in the master before any of these hooks runs; this file
# imports nothing of the app at its top, so gunicorn can read it on its own.


def on_starting(server):
    from codejail_service.sandbox import lifecycle

    lifecycle.service_starting()


def child_exit(server, worker):
    from codejail_service.sandbox import lifecycle

    lifecycle.worker_gone()


def on_exit(server):
    from codejail_service.sandbox import lifecycle

    lifecycle.service_stopping()
