"""No secret in any log line: API keys, bearer tokens, session cookies, CSRF tokens,
passwords, codes. Secrets are found by the header or parameter that names them, and by
the shape of the value (an ``ayct_`` key anywhere).

Libraries log what they are given: Tornado, for one, logs ``Invalid header value '...'``
with the whole ``Authorization`` or ``Cookie`` value when a header holds a control
character. :func:`install` redacts every log record when it is created (the record
factory covers every logger and every handler, also ones added later) and adds a
:class:`RedactingFilter` to the root handlers and Tornado's loggers for records made
any other way. The message, the formatted traceback and the stack are all redacted.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import quote

MASK = "[REDACTED]"
# One character of a key as it appears in a log line: itself, or a repr escape such as
# \x01 or \\ (a control character inside a key must not cut the redaction short).
_KEYCHAR = r"(?:[A-Za-z0-9_\-]|\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[a-z\\]))"
_SECRET_NAMES = (r"(?:__Host-)?ayct_session|_xsrf|_csrf|csrf|password|passwd|secret|token|"
                 r"reset_code|code|api_key|apikey|access_token")
_QUOTED = r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""


def _mask_value(match: re.Match) -> str:
    value = match.group(2)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return match.group(1) + quote + MASK + quote


# Headers whose whole value is secret, wherever a line shows one by name ("Cookie: ...",
# "'X-CSRF-Token': '...'"): masked up to the end of the quoted value, else of the line.
_SECRET_HEADERS = (r"authorization|proxy-authorization|cookie|set-cookie|x-api-key|api-key|"
                   r"x-csrf-token|x-xsrf-token|x-auth-token|x-amz-security-token")
# Separators as they appear in a log line: spaces, or their repr escapes (\t).
_SP = r"(?:[ \t]|\\t)*"


_PATTERNS = [
    # Tornado's "Invalid header value '...'" names no header: the value may be any secret
    # (a cookie, a CSRF token), so it is masked whole.
    (re.compile(r"(Invalid header (?:value|line) )(" + _QUOTED + r"|\S+)"),
     _mask_value),
    # Secret headers by name: the whole value (a cookie header holds several).
    (re.compile(r"(?i)((?<![A-Za-z0-9_\-])(?:" + _SECRET_HEADERS + r")[\"']?" + _SP +
                r":" + _SP + r")(" + _QUOTED + r"|[^\r\n'\"]+)"), _mask_value),
    # Authorization schemes: everything up to the next space or quote.
    (re.compile(r"(?i)\b(bearer|basic)(\s+|\\t)[^\s'\"]+"), r"\1\2" + MASK),
    # Cookies and form, query or JSON parameters that hold secrets (before the key
    # pattern: "ayct_session\t=..." is a cookie name, not a key). Spaces or their escapes
    # may stand between the name and "=" or ":".
    (re.compile(r"(?i)((?<![A-Za-z0-9])(?:" + _SECRET_NAMES + r")[\"']?" + _SP + r"[=:]" +
                _SP + r")(" + _QUOTED + r"|[^\s;&,'\"]+)"), _mask_value),
    # API keys anywhere (ayct_ + token); not names such as ayct_session or metric names
    # (a name may be followed by escaped white space, as in a repr).
    (re.compile(r"ayct_(?![a-z_]+(?:\\[tnrfv])*(?![A-Za-z0-9_\-\\]))" + _KEYCHAR + "{6,}"),
     "ayct_" + MASK),
]


# What a logged request path may show as it is; anything else is percent-escaped, so a
# path cannot start a new line (CR, LF, NEL U+0085, U+2028...), carry other control
# characters, or fake a field of the line (";request_id=forged" -> "%3Brequest_id%3Dforged").
_PATH_SAFE = "/-._~!$&'()*+,:@%"
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/\-._~!$&'()*+,:@%]*")


def escape_path(text: str) -> str:
    """A request path (or method) fit for one field of a log line: the bytes that came
    on the wire (Tornado decodes the request line as latin-1), percent-escaped outside
    a conservative set."""
    if _PLAIN_PATH.fullmatch(text):
        return text
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return quote(raw, safe=_PATH_SAFE)


def redact(text: str) -> str:
    """``text`` with every secret-looking value replaced by ``[REDACTED]``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record in place: message (formatted with its args), traceback, stack."""
    if getattr(record, "_ayct_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must not hide the record
        message = f"{record.msg} {record.args}"
    record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    record._ayct_redacted = True


class RedactingFilter(logging.Filter):
    """A filter that redacts (and never drops) each record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_FILTER = RedactingFilter()


def install() -> None:
    """Redact every log record of this process (idempotent)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "_ayct_redacting", False):
        def make_record(*args, **kwargs) -> logging.LogRecord:
            record = factory(*args, **kwargs)
            redact_record(record)
            return record
        make_record._ayct_redacting = True
        logging.setLogRecordFactory(make_record)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    for name in ("tornado.access", "tornado.application", "tornado.general"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
