"""
gunicorn settings: ``gunicorn -c python:codejail_service.gunicorn_config codejail_service.wsgi``.

Environment:

- ``CODEJAIL_SERVICE_BIND``: address to listen on (default ``127.0.0.1:8550``, the LMS default).
- ``CODEJAIL_SERVICE_WORKERS``: worker processes (default 2 x CPU cores). Each sync worker
  handles one request at a time and mostly waits for its sandbox process; remember that all
  concurrent runs share the sandbox user's host-wide NPROC limit.
- ``CODEJAIL_SERVICE_TIMEOUT``: seconds before a silent worker is killed and replaced.
"""

import multiprocessing
import os

bind = os.environ.get("CODEJAIL_SERVICE_BIND", "127.0.0.1:8550")

# Sync workers: one request per process, nothing shared between runs.
worker_class = "sync"
workers = int(os.environ.get("CODEJAIL_SERVICE_WORKERS", 2 * multiprocessing.cpu_count()))

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
