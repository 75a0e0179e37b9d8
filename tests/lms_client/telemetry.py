"""A telemetry backend (OPENEDX_TELEMETRY) that keeps what the LMS's client records, for the tests."""
import contextlib

from edx_django_utils.monitoring import TelemetryBackend

ATTRIBUTES = {}


class RecordingBackend(TelemetryBackend):
    """Keeps every custom attribute the client sets (its darklaunch comparison reports through them)."""

    def set_attribute(self, key, value):
        ATTRIBUTES[key] = value

    def record_exception(self):
        pass

    def create_span(self, name, operation_name=None):
        return contextlib.nullcontext()

    def tag_root_span_with_error(self, exception):
        pass

    def set_local_root_span_name(self, name, group=None, priority=None):
        pass
