"""
JSON bodies for every error, including the ones Django answers itself.

Callers (the LMS/CMS) treat a non-JSON body as a protocol failure, so 400/403/404/405/413/500
all answer ``{"error": "..."}`` with ``Content-Type: application/json``.
"""

import logging

from django.http import JsonResponse
from rest_framework.views import exception_handler

log = logging.getLogger(__name__)


def error_response(message, status):
    """The one shape of an error answer: ``{"error": message}``."""
    return JsonResponse({"error": message}, status=status)


def json_exception_handler(exc, context):
    """DRF exception handler: DRF's own status, body reshaped to ``{"error": "..."}``."""
    response = exception_handler(exc, context)
    if response is not None:
        detail = getattr(exc, "detail", None)
        response.data = {"error": str(detail) if detail is not None else str(exc)}
    return response


def bad_request(request, exception=None):
    """handler400: e.g. a disallowed Host header or a form Django refused to parse."""
    reason = str(exception) if exception is not None and str(exception) else "Bad request"
    return error_response(f"Bad request: {reason}", 400)


def permission_denied(request, exception=None):
    """handler403."""
    return error_response("Forbidden", 403)


def not_found(request, exception=None):
    """handler404: names the path, so a misconfigured client URL is obvious."""
    return error_response(f"Not found: {request.path}", 404)


def server_error(request):
    """handler500: the traceback is in the log, never in the body."""
    return error_response("Internal server error; see the service logs", 500)
