"""Typed SSE events (``event: NAME`` then ``data: JSON``), as the Responses and Messages
streams send them, encoded cheaply.

:func:`sse_event` encodes one event with one JSON encoder made once. An event sent once
per token (a text delta) comes from an :func:`event_template` instead: encoded once per
stream with its changing values left as ``%s``, then filled per event by string
formatting, a text through :func:`json_string` (the C escaper ``json.dumps`` itself
uses), so the bytes are exactly those :func:`sse_event` gives for the same payload.
"""
from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii

# ``json.dumps(data, separators=(",", ":"))`` builds a new encoder per call; one made once.
_COMPACT = json.JSONEncoder(separators=(",", ":"))

json_string = encode_basestring_ascii
"""A string as JSON text, exactly as ``json.dumps`` (ASCII-escaped) writes it."""

json_text = _COMPACT.encode
"""A value as compact JSON text, as ``json.dumps(value, separators=(",", ":"))``."""

HOLE = "\x00"
"""A payload value :func:`event_template` leaves to fill (no id, index or name holds a
NUL)."""
_HOLE_JSON = json_string(HOLE)


def sse_event(name: str, payload: dict) -> str:
    """One SSE event: ``event: name``, then the payload as compact JSON (ASCII-escaped,
    as ``json.dumps`` writes it)."""
    return f"event: {name}\ndata: {json_text(payload)}\n\n"


def event_template(name: str, payload: dict, holes: int) -> str:
    """The event as a ``%`` format string: its ``holes`` values set to :data:`HOLE`
    become ``%s``, to fill (in the payload's order) with JSON text: ``str(number)``,
    ``json_string(text)``, an encoded object."""
    text = sse_event(name, payload)
    if text.count(_HOLE_JSON) != holes:
        raise ValueError(f"{name}: expected {holes} holes in {text!r}")
    return text.replace("%", "%%").replace(_HOLE_JSON, "%s")
