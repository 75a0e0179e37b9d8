"""The core app: health, startup safety checks, the execution wrapper, toggles."""

from django.apps import AppConfig
from django.conf import settings


class CoreConfig(AppConfig):
    """Hands settings.CODE_JAIL to codejail once Django is set up."""

    name = "codejail_service.apps.core"
    label = "core"

    def ready(self):
        # Imported here: codejail's module import inspects the environment.
        from codejail.django_integration_utils import apply_django_settings

        apply_django_settings(settings.CODE_JAIL)
        # codejail's subprocesses with capped output and no needless cleanup process.
        from codejail_service.sandbox import codejail_extension

        codejail_extension.install()
