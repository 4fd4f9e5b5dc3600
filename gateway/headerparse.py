"""Request headers parsed with one regular expression instead of several per line.

Tornado's ``HTTP1Connection._parse_headers`` splits the header block into lines and, for
each line, runs a regular-expression search for its end, full matches of the name and of
the value against RFC 9110's rules, and Http-Header-Case normalisation three times (five
to seven Python calls per header): about 40 µs for the seven headers of a usual API
request, on the path to the first token.

:class:`FastHeaderConnection` (what :class:`gateway.httpguard.RequestGuard` makes of each
server-side ``HTTP1Connection``) checks the whole block against those same rules with one
compiled pattern and then builds the same ``HTTPHeaders`` (names normalised, repeated
headers kept in order, values stripped of spaces and tabs). A block the pattern does not
accept (bare LF line ends, folded lines, characters outside the rules) goes to Tornado's
own parser unchanged, which accepts or refuses it as before.
"""
from __future__ import annotations

import re

from tornado import httputil
from tornado.http1connection import HTTP1Connection

_normalize = httputil._normalize_header   # Tornado's own (cached) normalisation

_VCHAR = r"[\x21-\x7e\x80-\xff]"           # field-vchar: VCHAR / obs-text
_CLEAN_BLOCK = re.compile(
    r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*"            # field-name ":" OWS
    rf"(?:{_VCHAR}(?:[\x21-\x7e\x80-\xff \t]*{_VCHAR})?)?"  # field-value
    r"[ \t]*\r\n)*\r\n")                                  # OWS CRLF ... CRLF


class RequestHeaders(httputil.HTTPHeaders):
    """``HTTPHeaders`` whose ``get`` is a dictionary lookup: the inherited ``Mapping.get``
    goes through ``__getitem__`` and raises and catches a ``KeyError`` for every absent
    header (most of the ten or so a request is asked for)."""

    def get(self, name, default=None):
        """The header's value (repeated headers joined by commas), else ``default``."""
        if type(name) is not str:
            return super().get(name, default)
        header = _normalize(name)
        value = self._combined_cache.get(header)
        if value is None:
            values = self._as_list.get(header)
            if values is None:
                return default
            value = self._combined_cache[header] = ",".join(values)
        return value


def parse_headers(data: bytes) -> tuple[str, httputil.HTTPHeaders] | None:
    """(start line, headers) as Tornado's ``_parse_headers`` returns them, or None when
    the block is not plain CRLF-terminated lines that follow the rules (then Tornado's
    parser decides)."""
    text = data.decode("latin1").lstrip("\r\n")
    lf = text.find("\n")
    if lf < 1 or text[lf - 1] != "\r":
        return None
    start_line = text[:lf - 1]
    if start_line.endswith("\r"):
        return None
    block = text[lf + 1:]
    if _CLEAN_BLOCK.fullmatch(block) is None:
        return None
    headers = RequestHeaders()
    if len(block) > 2:
        as_list, combined = headers._as_list, headers._combined_cache
        for line in block[:-4].split("\r\n"):
            name, _, value = line.partition(":")
            name = _normalize(name)
            value = value.strip(" \t")
            values = as_list.get(name)
            if values is None:
                as_list[name] = [value]
                combined[name] = value
            else:
                combined.pop(name, None)
                values.append(value)
    return start_line, headers


class FastHeaderConnection(HTTP1Connection):
    """A server-side ``HTTP1Connection`` whose request headers are parsed by
    :func:`parse_headers` (Tornado's parser for anything it does not take)."""

    def _parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        return parse_headers(data) or super()._parse_headers(data)


def speed_up(conn: object) -> None:
    """Make a new server-side ``HTTP1Connection`` a :class:`FastHeaderConnection`
    (connections of any other class are left alone)."""
    if type(conn) is HTTP1Connection:
        conn.__class__ = FastHeaderConnection
