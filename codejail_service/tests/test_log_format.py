"""Log lines a caller cannot forge: the formatter the service's every handler uses."""
import logging

from codejail_service.log_format import CONTINUATION

FORGED = "p1\n2026-12-07 04:00:00,000 ERROR 1 [codejail_service] forged \x1b[2Jcleared\r"


def configured_formatter():
    """The formatter of the service's handler, as Django configured it from the settings' LOGGING."""
    (handler,) = [h for h in logging.getLogger().handlers if h.name == "console"]
    return handler.formatter


def record(message, *args, exc_info=None):
    return logging.LogRecord("codejail_service.test", logging.INFO, __file__, 1, message, args, exc_info)


def test_a_slug_with_newlines_and_escape_sequences_stays_one_line():
    line = configured_formatter().format(record("Executed jailed code %s in %s", FORGED, "/tmp/codejail-x"))
    assert "\n" not in line and "\x1b" not in line and "\r" not in line
    assert line.endswith("Executed jailed code p1\\n2026-12-07 04:00:00,000 ERROR 1 [codejail_service] forged "
                         "\\x1b[2Jcleared\\r in /tmp/codejail-x")


def test_an_ordinary_message_is_logged_as_it_is():
    line = configured_formatter().format(record("Executed jailed code %s in %s", "course-v1:X+Y+Z é", "/tmp/d"))
    assert line.endswith("Executed jailed code course-v1:X+Y+Z é in /tmp/d")


def test_a_traceback_quoting_caller_input_marks_each_of_its_lines_as_a_continuation():
    try:
        raise ValueError(FORGED)
    except ValueError as exc:
        line = configured_formatter().format(record("Unexpected error", exc_info=(type(exc), exc, exc.__traceback__)))
    first, *rest = line.split("\n")
    assert first.endswith("Unexpected error") and rest
    assert all(following.startswith(CONTINUATION) for following in rest)
    assert "\x1b" not in line and "\r" not in line
