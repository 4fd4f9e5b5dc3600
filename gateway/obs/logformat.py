"""Log line formats: ``text`` (the default) or ``json`` (``[server] log_format``).

JSON lines come from python-json-logger: ``timestamp``, ``level``, ``logger``,
``message`` and the record's extra fields (access log lines add ``request_id``,
``completion_id``, ``method``, ``path``, ``status``, ``duration_ms``). Tracebacks are
redacted like the message (see :mod:`gateway.obs.logredact`). Text lines show control and
line-separator characters escaped (no log injection).
"""
from __future__ import annotations

import logging
import re

from pythonjsonlogger.json import JsonFormatter

from gateway.obs import logredact

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingJsonFormatter(JsonFormatter):
    """JSON lines whose tracebacks and stacks are redacted too."""

    def formatException(self, ei) -> str:
        return logredact.redact(super().formatException(ei))

    def formatStack(self, stack_info) -> str:
        return logredact.redact(super().formatStack(stack_info))


# Characters that would end or garble a text log line, or hide text on a terminal:
# C0 controls but tab and the line feed (a traceback's own lines), DEL, C1 controls
# (NEL U+0085 among them) and the Unicode line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match) -> str:
    char = match.group()
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


class SafeTextFormatter(logging.Formatter):
    """Text lines in which no logged value can start a new line or send terminal
    control sequences: such characters are shown escaped (``\\x85``)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return RedactingJsonFormatter("%(levelname)s %(name)s %(message)s", timestamp=True,
                                      rename_fields={"levelname": "level", "name": "logger"})
    return SafeTextFormatter(TEXT_FORMAT)
