"""URLs: the code-exec API and the health check. Every error answer is JSON."""

from django.urls import path

from codejail_service.apps.api.v0.views import CodeExecView
from codejail_service.apps.core.views import HealthView, OpenApiSchemaView

urlpatterns = [
    # The LMS/CMS post to exactly this path (no trailing slash).
    path("api/v0/code-exec", CodeExecView.as_view(), name="code_exec"),
    path("health/", HealthView.as_view(), name="health"),
    path("api/schema/", OpenApiSchemaView.as_view(), name="openapi_schema"),
]

handler400 = "codejail_service.apps.core.errors.bad_request"
handler403 = "codejail_service.apps.core.errors.permission_denied"
handler404 = "codejail_service.apps.core.errors.not_found"
handler500 = "codejail_service.apps.core.errors.server_error"
