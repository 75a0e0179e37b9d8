"""
``manage.py sandbox_versions``: the sandbox's Python, package set and package versions, as JSON,
read from the configured sandbox venv (the same report as ``/health/``'s ``sandbox``).
"""
import json

from django.core.management.base import BaseCommand, CommandError

from codejail_service.apps.core.sandbox_versions import read_versions, sandbox_venv


class Command(BaseCommand):
    help = "Print the sandbox venv's Python, package set and package versions (JSON)."

    def handle(self, *args, **options):
        venv = sandbox_venv()
        try:
            versions = read_versions(venv)
        except OSError as exc:
            raise CommandError(f"cannot read the sandbox venv {venv}: {exc}") from exc
        self.stdout.write(json.dumps(versions, indent=2))
