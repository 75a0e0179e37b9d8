"""Refuse oversize or unmeasurable request bodies (and disallowed hosts) before anything reads them."""

from django.conf import settings
from edx_django_utils.monitoring import set_custom_attribute

from codejail_service.apps.core.errors import error_response


class RequestSizeLimitMiddleware:
    """
    Cap the whole request body at ``settings.CODEJAIL_MAX_REQUEST_BYTES``.

    The check uses the declared Content-Length only, so a 1 GiB upload is refused after its
    headers, without the worker reading (or buffering) the body. A chunked body has no declared
    length, and Django would silently read it as empty, so it is refused too (411).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # Nothing else asks for the host (no CommonMiddleware/CSRF); ask here so ALLOWED_HOSTS
        # is enforced (DisallowedHost becomes a 400 JSON answer).
        request.get_host()
        refusal = self.refusal(request)
        if refusal is not None:
            # The status attribute is documented in apps/api/v0/views.py.
            set_custom_attribute("codejail_service.status", "invalid.request_size")
            return refusal
        return self.get_response(request)

    @staticmethod
    def refusal(request):
        """The error response for a body we will not read, or None when its size is acceptable."""
        limit = settings.CODEJAIL_MAX_REQUEST_BYTES
        if "HTTP_TRANSFER_ENCODING" in request.META:
            return error_response(
                "Transfer-Encoding is not supported; send the body with a Content-Length header", 411
            )
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(declared)
        except ValueError:
            return error_response(f"Content-Length {declared!r} is not a number", 400)
        if length < 0:
            return error_response(f"Content-Length {declared!r} is negative", 400)
        if length > limit:
            return error_response(f"Request body of {length} bytes exceeds the limit of {limit} bytes", 413)
        return None
