"""
The service's log lines, safe from what callers send. A slug, a code snippet in an error or a
module name reaches the log inside messages; a newline in it would forge a log line of its own,
and an ANSI sequence would rewrite the operator's terminal.
"""
import logging
import re

# C0 and C1 control characters, DEL, and the line breaks str.splitlines() knows beyond them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What begins every line of a record after its first (a traceback's), so that none reads as a
# record of its own.
CONTINUATION = "  | "


def escape_controls(text):
    """``text`` with every control character written as a Python escape (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


class SafeFormatter(logging.Formatter):
    """
    One record, one line: control characters in the message are escaped, and the lines of an
    exception's traceback (which may quote caller input too) are escaped and marked as
    continuation lines.
    """

    def formatMessage(self, record):
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei):
        return self._continuation(super().formatException(ei))

    def formatStack(self, stack_info):
        return self._continuation(super().formatStack(stack_info))

    @staticmethod
    def _continuation(text):
        return "\n".join(CONTINUATION + escape_controls(line) for line in text.split("\n"))
