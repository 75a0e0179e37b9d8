"""
WSGI entry point: builds the application, then runs the startup safety checks once.

With gunicorn's ``preload_app`` (codejail_service/gunicorn_config.py) this module is imported
once in the master, so the checks run there and every worker inherits the cached results.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codejail_service.settings.production")

application = get_wsgi_application()

# After the application (and so codejail's configuration) is ready; never on settings import.
from codejail_service.apps.core.startup_checks import run_startup_checks  # noqa: E402

run_startup_checks()
