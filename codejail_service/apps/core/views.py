"""GET /health/: the startup safety checks, as JSON. GET /api/schema/: the OpenAPI schema."""

from drf_spectacular.renderers import OpenApiJsonRenderer
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from drf_spectacular.views import SpectacularAPIView
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from codejail_service.apps.core.sandbox_versions import sandbox_versions
from codejail_service.apps.core.startup_checks import get_startup_check_results
from codejail_service.apps.core.toggles import CODEJAIL_ENABLED

HEALTH_BODY = inline_serializer(
    name="Health",
    fields={
        "status": serializers.ChoiceField(choices=["ok", "failed", "not_run"]),
        "execution_enabled": serializers.BooleanField(),
        "checks": serializers.DictField(
            child=serializers.DictField(), help_text="check name -> {passed, reason, ...details}"
        ),
        "sandbox": serializers.DictField(
            help_text="what the sandbox runs code with, read from its venv: {venv, python, package_set, "
            "packages: {name: version}}, or {venv, error}"
        ),
    },
)


@extend_schema(
    summary="Startup safety checks",
    responses={
        200: OpenApiResponse(HEALTH_BODY, description="Up, and every startup safety check passed."),
        503: OpenApiResponse(HEALTH_BODY, description="A check failed, or the checks have not run."),
    },
)
class HealthView(APIView):
    """
    200 when the startup safety checks ran and all passed, 503 otherwise.

    Body (stable; documented in docs/)::

        {
          "status": "ok" | "failed" | "not_run",
          "execution_enabled": true | false,     # the CODEJAIL_ENABLED toggle
          "checks": {"<name>": {"passed": bool, "reason": str | null, ...details}, ...},
          "sandbox": {"venv": str, "python": "3.11.2", "package_set": "current-py311" | <file> | null,
                      "packages": {"numpy": "1.26.4", ...}}     # or {"venv", "error"}
        }
    """

    def get(self, request):
        results = get_startup_check_results()
        if results is None:
            status, checks = "not_run", {}
        else:
            checks = {name: result.as_json() for name, result in results.items()}
            status = "ok" if all(result.passed for result in results.values()) else "failed"
        body = {"status": status, "execution_enabled": CODEJAIL_ENABLED.is_enabled(), "checks": checks,
                "sandbox": sandbox_versions()}
        return Response(body, status=200 if status == "ok" else 503)


class _OpenApiJsonRenderer(OpenApiJsonRenderer):
    # Every answer of the service is plain application/json (SPEC), the schema too.
    media_type = "application/json"


class OpenApiSchemaView(SpectacularAPIView):
    """The OpenAPI 3 schema of this API, as JSON (docs/openapi.yaml is the checked-in copy)."""

    renderer_classes = [_OpenApiJsonRenderer]
