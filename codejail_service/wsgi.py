"""
WSGI entry point: builds the application, then runs the startup safety checks once.

With gunicorn's ``preload_app`` (codejail_service/gunicorn_config.py) this module is imported
once in the master, so the checks run there and every worker inherits the cached results.
"""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codejail_service.settings.production")

application = get_wsgi_application()

# Django imports the URLconf (views, DRF, the OpenAPI schema machinery) on the first request.
# Do it here: with preload_app that is once, in the master, shared by every worker after fork,
# instead of once per worker (and per recycled worker) inside a request (~14 % of a worker's
# samples in a 20 s profile under load, and a slow first answer).
get_resolver().url_patterns  # noqa: B018 -- evaluated for its side effect

# After the application (and so codejail's configuration) is ready; never on settings import.
from codejail_service.apps.core.sandbox_versions import log_versions  # noqa: E402
from codejail_service.apps.core.startup_checks import run_startup_checks  # noqa: E402

log_versions()
run_startup_checks()
