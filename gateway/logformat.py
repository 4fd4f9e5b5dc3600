"""Log line formats: ``text`` (the default) or ``json`` (``[server] log_format``).

JSON lines come from python-json-logger: ``timestamp``, ``level``, ``logger``,
``message`` and the record's extra fields (access log lines add ``request_id``,
``completion_id``, ``method``, ``path``, ``status``, ``duration_ms``). Tracebacks are
redacted like the message (see :mod:`gateway.logredact`).
"""
from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter

from gateway import logredact

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingJsonFormatter(JsonFormatter):
    """JSON lines whose tracebacks and stacks are redacted too."""

    def formatException(self, ei) -> str:
        return logredact.redact(super().formatException(ei))

    def formatStack(self, stack_info) -> str:
        return logredact.redact(super().formatStack(stack_info))


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return RedactingJsonFormatter("%(levelname)s %(name)s %(message)s", timestamp=True,
                                      rename_fields={"levelname": "level", "name": "logger"})
    return logging.Formatter(TEXT_FORMAT)
