"""GET /health/: the startup safety checks, as JSON."""

from rest_framework.response import Response
from rest_framework.views import APIView

from codejail_service.apps.core.startup_checks import get_startup_check_results
from codejail_service.apps.core.toggles import CODEJAIL_ENABLED


class HealthView(APIView):
    """
    200 when the startup safety checks ran and all passed, 503 otherwise.

    Body (stable; documented in docs/)::

        {
          "status": "ok" | "failed" | "not_run",
          "execution_enabled": true | false,     # the CODEJAIL_ENABLED toggle
          "checks": {"<name>": {"passed": bool, "reason": str | null, ...details}, ...}
        }
    """

    def get(self, request):
        results = get_startup_check_results()
        if results is None:
            status, checks = "not_run", {}
        else:
            checks = {name: result.as_json() for name, result in results.items()}
            status = "ok" if all(result.passed for result in results.values()) else "failed"
        body = {"status": status, "execution_enabled": CODEJAIL_ENABLED.is_enabled(), "checks": checks}
        return Response(body, status=200 if status == "ok" else 503)
