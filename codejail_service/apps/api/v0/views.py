"""POST /api/v0/code-exec: run course-provided Python for the LMS/CMS."""

import json
import logging
import time
import weakref

from django.conf import settings
from drf_spectacular.utils import OpenApiRequest, OpenApiResponse, extend_schema, inline_serializer
from edx_django_utils.monitoring import set_custom_attribute
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from rest_framework import serializers
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from codejail_service.apps.core.admission import GATE, Overloaded
from codejail_service.apps.core.execution import run_code
from codejail_service.apps.core.startup_checks import startup_checks_passed
from codejail_service.apps.core.toggles import CODEJAIL_ENABLED

log = logging.getLogger(__name__)

# The `payload` form field, as the LMS sends it (xmodule/capa/safe_exec/remote_exec.py).
# Extra keys are tolerated so a newer LMS adding one does not break grading.
PAYLOAD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "code": {"type": "string"},
        "globals_dict": {"type": "object"},
        # The LMS sends null as well as lists for these.
        "python_path": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        "limit_overrides_context": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "slug": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "unsafely": {"type": "boolean"},
    },
    "required": ["code", "globals_dict"],
}
Draft202012Validator.check_schema(PAYLOAD_SCHEMA)  # a broken schema fails at import, not per request
PAYLOAD_VALIDATOR = Draft202012Validator(PAYLOAD_SCHEMA)

# The one file name the LMS uses (a zip of course modules). codejail copies python_path entries
# it was not given as files from the web app's own disk, and writes uploaded files under their
# given names: any other name would let a caller read or write files as the app user.
ALLOWED_FILE_NAME = "python_lib.zip"
# The reference service's words for refusing anything else (operators' tooling and its API tests
# match them exactly); what was refused goes to the log only.
PYTHON_PATH_REFUSAL = f"Only allowed entry in 'python_path' is {ALLOWED_FILE_NAME!r}"
FILE_NAME_REFUSAL = f"Only allowed name for uploaded file is {ALLOWED_FILE_NAME!r}"


# Lists/objects within each other in the payload; course globals are a few levels deep. Python's
# stack (recursion limit 1000) breaks somewhere past ~400 levels in deepcopy and codejail.
MAX_PAYLOAD_NESTING = 100


def nesting_depth(value):
    """How many lists/objects deep ``value`` goes (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


# .. custom_attribute_name: codejail_service.status
# .. custom_attribute_description: Outcome of a code-exec request as one dotted status:
#   disabled.toggle (CODEJAIL_ENABLED off), disabled.startup_checks (safety checks not passed),
#   invalid.<reason> (refused with 400: payload_missing, payload_duplicated, payload_not_text,
#   payload_json, payload_nesting, payload_schema, unsafely, file_not_upload, file_name,
#   file_duplicated, python_path, file_missing; and invalid.request_size from the size-limit
#   middleware), overloaded (503 + Retry-After: the worker's queue was full or the wait too long;
#   see CODEJAIL_ADMISSION), executed.success, or
#   executed.error (the code raised, was killed or broke the protocol; 200 with emsg).
def _refuse(status_slug, message, status=400, detail=None):
    """One refused request: telemetry status, log line (with ``detail``, if any), JSON error answer."""
    set_custom_attribute("codejail_service.status", status_slug)
    log.info("Refused code-exec request (%s): %s%s", status_slug, message, f" ({detail})" if detail else "")
    return Response({"error": message}, status=status)


# The OpenAPI description of the request and the answers (GET /api/schema/, docs/openapi.yaml).
# `payload` is a JSON part (Python's JSON: NaN and Infinity are accepted); answers are strict JSON
# (non-finite floats as null: codejail_service/apps/core/renderers.py).
CODE_EXEC_PAYLOAD = inline_serializer(
    name="CodeExecPayload",
    fields={
        "code": serializers.CharField(allow_blank=True, trim_whitespace=False),
        "globals_dict": serializers.DictField(),
        "python_path": serializers.ListField(
            child=serializers.ChoiceField(choices=[ALLOWED_FILE_NAME]), allow_null=True, required=False,
            help_text=f"Only {ALLOWED_FILE_NAME!r}, and only when that file is uploaded.",
        ),
        "limit_overrides_context": serializers.CharField(allow_null=True, required=False),
        "slug": serializers.CharField(allow_null=True, required=False, help_text="For the logs."),
        "unsafely": serializers.ChoiceField(choices=[False], required=False,
                                            help_text="Always refused when true."),
    },
)
CODE_EXEC_REQUEST = inline_serializer(
    name="CodeExecRequest",
    fields={
        "payload": CODE_EXEC_PAYLOAD,
        ALLOWED_FILE_NAME: serializers.FileField(
            required=False, help_text="A zip of course-provided modules, importable when python_path names it."
        ),
    },
)
CODE_EXEC_ANSWER = inline_serializer(
    name="CodeExecAnswer",
    fields={
        "globals_dict": serializers.DictField(
            help_text="The JSON-safe globals after the run (the input ones when it failed). Strict JSON: "
            "non-finite floats (NaN, Infinity, -Infinity) are answered as null, which every JSON parser "
            "reads (the LMS's simplejson refuses the bare tokens)."
        ),
        "emsg": serializers.CharField(required=False, help_text="Present when the code raised, was killed or "
                                      "broke the protocol: codejail's message, with the sandbox's output."),
    },
)
ERROR_ANSWER = inline_serializer(name="Error", fields={"error": serializers.CharField()})


class RunAnswer(Response):
    """
    A run's answer. Its slot is released (``Run.release``: the end of the run's processes, its
    files) once the answer has been sent: the WSGI server closes the response then. Should it
    never be sent (an error past the view), as it is dropped.
    """

    def __init__(self, data, run):
        super().__init__(data)
        self._release = weakref.finalize(self, run.release)

    def close(self):
        try:
            super().close()
        finally:
            self._release()


@extend_schema(
    methods=["POST"],
    summary="Run course Python code in the sandbox",
    # As the LMS sends it. (A urlencoded body with the same `payload` field is accepted too.)
    request={
        "multipart/form-data": OpenApiRequest(
            CODE_EXEC_REQUEST, encoding={"payload": {"contentType": "application/json"}}
        )
    },
    responses={
        200: OpenApiResponse(CODE_EXEC_ANSWER, description="The code ran (emsg absent) or failed (emsg set)."),
        400: OpenApiResponse(ERROR_ANSWER, description="The request is invalid; error says why."),
        411: OpenApiResponse(ERROR_ANSWER, description="A chunked body (no Content-Length)."),
        413: OpenApiResponse(ERROR_ANSWER, description="The body exceeds CODEJAIL_MAX_REQUEST_BYTES."),
        503: OpenApiResponse(
            ERROR_ANSWER,
            description="Execution is off, the startup checks did not pass, or the service is at capacity "
            "(then with Retry-After).",
        ),
    },
)
class CodeExecView(APIView):
    """
    Validate an LMS code-exec request, run it through the sandbox, answer per SPEC.md.

    Success and failed runs answer 200 with ``globals_dict`` (plus ``emsg`` on failure); refused
    requests answer 400 (invalid) or 503 (execution off, or at capacity) with ``{"error": "..."}``.
    """

    # The LMS posts multipart (payload + python_lib.zip); urlencoded covers payload-only clients.
    parser_classes = [MultiPartParser, FormParser]

    def post(self, request):
        received = time.monotonic()  # the LMS's deadline counts from about now (admission)
        # Operators keep execution off until /health/ has shown the sandbox confines code.
        if not CODEJAIL_ENABLED.is_enabled():
            return _refuse("disabled.toggle", "Code execution is disabled (CODEJAIL_ENABLED is off)", 503)

        # Never run code on a host where the sandbox was not proven to confine it.
        if not startup_checks_passed():
            if settings.CODEJAIL_ENFORCE_STARTUP_CHECKS:
                return _refuse(
                    "disabled.startup_checks",
                    "Code execution is refused: the startup safety checks have not passed (see /health/)",
                    503,
                )
            log.warning(
                "EXECUTING UNCHECKED: startup safety checks did not pass but CODEJAIL_ENFORCE_STARTUP_CHECKS "
                "is off. This must never happen in production."
            )
            # .. custom_attribute_name: codejail_service.unchecked_execution
            # .. custom_attribute_description: True when code ran although the startup safety checks
            #   had not passed (CODEJAIL_ENFORCE_STARTUP_CHECKS off; for sabotage CI runs only).
            set_custom_attribute("codejail_service.unchecked_execution", True)

        # The payload is a JSON string in a form field (not a file part, not given twice).
        payloads = request.data.getlist("payload") if hasattr(request.data, "getlist") else []
        if not payloads:
            return _refuse("invalid.payload_missing", "Missing form field 'payload'")
        if len(payloads) > 1:
            return _refuse("invalid.payload_duplicated", "Form field 'payload' given more than once")
        if not isinstance(payloads[0], str):
            return _refuse("invalid.payload_not_text", "'payload' must be a form field, not a file upload")

        # Python's JSON, as the LMS writes it: NaN and Infinity are accepted.
        try:
            payload = json.loads(payloads[0])
        except ValueError as exc:
            return _refuse("invalid.payload_json", f"'payload' is not valid JSON: {exc}")
        except RecursionError:
            payload = None  # deeper than the parser goes: refused just below
        # Deeper nesting than any course uses would exhaust the stack later (deepcopy, codejail).
        if payload is None or nesting_depth(payload) > MAX_PAYLOAD_NESTING:
            return _refuse("invalid.payload_nesting", f"'payload' is nested deeper than {MAX_PAYLOAD_NESTING} levels")

        # Shape of the payload; the most relevant error, with where it is.
        error = best_match(PAYLOAD_VALIDATOR.iter_errors(payload))
        if error is not None:
            return _refuse(
                "invalid.payload_schema", f"'payload' does not match the schema at {error.json_path}: {error.message}"
            )

        # Unsafe execution runs code with no sandbox at all: never over the network.
        if payload.get("unsafely"):
            return _refuse("invalid.unsafely", "Refusing to execute code with 'unsafely': true")

        # The course library sent as a plain form field is a client bug that would otherwise be
        # silently ignored (and the code run without its library).
        if ALLOWED_FILE_NAME in request.data and ALLOWED_FILE_NAME not in request.FILES:
            return _refuse("invalid.file_not_upload", f"{ALLOWED_FILE_NAME!r} must be a file upload, not a form field")

        # Only the course library zip may be uploaded, once; codejail writes it under this name.
        # The reference service's wording, which operators' tooling checks; the name goes to the log.
        extra_files = []
        for name, uploads in request.FILES.lists():
            if name != ALLOWED_FILE_NAME:
                return _refuse("invalid.file_name", FILE_NAME_REFUSAL, detail=f"uploaded file name {name!r}")
            if len(uploads) > 1:
                return _refuse("invalid.file_duplicated", f"File {name!r} uploaded more than once")
            extra_files.append((name, uploads[0].read()))

        # python_path may only name the uploaded zip: an entry with no matching file would make
        # codejail copy that path from the web app's own disk into the sandbox.
        python_path = payload.get("python_path") or []
        for entry in python_path:
            if entry != ALLOWED_FILE_NAME:
                return _refuse("invalid.python_path", PYTHON_PATH_REFUSAL, detail=f"python_path entry {entry!r}")
        uploaded_names = {name for name, _ in extra_files}
        if python_path and ALLOWED_FILE_NAME not in uploaded_names:
            return _refuse(
                "invalid.file_missing", f"python_path names {ALLOWED_FILE_NAME!r} but no such file was uploaded"
            )

        slug = payload.get("slug")
        limit_overrides_context = payload.get("limit_overrides_context")
        # .. custom_attribute_name: codejail_service.slug
        # .. custom_attribute_description: The caller's label for the code (usually the problem's
        #   usage key), or None.
        set_custom_attribute("codejail_service.slug", slug)
        # .. custom_attribute_name: codejail_service.files_count
        # .. custom_attribute_description: Number of files uploaded with the request (0 or 1).
        set_custom_attribute("codejail_service.files_count", len(extra_files))
        # .. custom_attribute_name: codejail_service.python_path_length
        # .. custom_attribute_description: Number of entries in the payload's python_path.
        set_custom_attribute("codejail_service.python_path_length", len(python_path))
        # .. custom_attribute_name: codejail_service.limit_overrides_context
        # .. custom_attribute_description: The payload's limit_overrides_context (picks a set of
        #   CODE_JAIL limit overrides), or None.
        set_custom_attribute("codejail_service.limit_overrides_context", limit_overrides_context)

        # Beyond what this worker can start soon, say so at once: the LMS gives up after 3.5 s,
        # and a run it no longer waits for only delays the ones it still does.
        try:
            run = GATE.admit(received)
        except Overloaded as exc:
            response = _refuse(
                "overloaded", f"The service is at capacity ({exc.reason}); retry in {exc.retry_after} s", 503
            )
            response["Retry-After"] = str(exc.retry_after)
            return response
        try:
            globals_out, emsg = run_code(
                payload["code"],
                payload["globals_dict"],
                run=run,
                python_path=python_path,
                limit_overrides_context=limit_overrides_context,
                slug=slug,
                extra_files=extra_files,
            )
        except BaseException:
            run.release()
            raise
        GATE.ran(run)
        # Every 200 carries globals_dict: the LMS updates its globals from it even on failure.
        if emsg is None:
            set_custom_attribute("codejail_service.status", "executed.success")
            response = RunAnswer({"globals_dict": globals_out}, run)
        else:
            set_custom_attribute("codejail_service.status", "executed.error")
            response = RunAnswer({"globals_dict": globals_out, "emsg": emsg}, run)
        # Where the run's time went (make bench sums these); nothing the caller did not see pass.
        response["Server-Timing"] = run.server_timing()
        return response
