"""Request parsing and validation for the OpenAI-compatible API and the WebSocket.

Bounded for any body within ``max_body_bytes`` (hostile input is the design case):
- :func:`loads` refuses NaN/Infinity and numbers that overflow to infinity, more than
  :data:`MAX_CONTAINERS` objects/arrays (counted on the raw bytes before parsing),
  nesting deeper than :data:`MAX_DEPTH`, and turns a ``RecursionError`` into a 400;
- :func:`validate` runs the schema compiled to Python by fastjsonschema, which stops at
  the first error (array lengths are checked before items), and explains that one
  error in a message of bounded size. Nothing ever enumerates all errors.
- Bodies over :data:`OFFLOAD_BYTES` are parsed and checked in a worker thread with
  Python number hooks, so the event loop gets the GIL back every few milliseconds
  instead of waiting for a whole megabyte (the ``*_async`` functions).
The cyclic garbage collector is paused while a body is parsed and checked: a body of
many small containers would otherwise trigger collections that cost more than the parse.
"""
from __future__ import annotations

import asyncio
import gc
import heapq
import json
import reprlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import fastjsonschema

from gateway.errors import APIError

MAX_DEPTH = 64              # objects/arrays nested deeper than this are refused (400)
MAX_CONTAINERS = 100_000    # more objects/arrays than this in one body are refused (400)
OFFLOAD_BYTES = 64 * 1024   # larger bodies are parsed and validated in a worker thread
MAX_N = 128                 # choices per request (as OpenAI); a backend may allow fewer
POLICIES = ("pass", "drop", "refuse")   # what to do with request fields we do not know

_NUM = {"type": ["number", "null"]}
_COMMON: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"],
                       "properties": {"include_usage": {"type": "boolean"},
                                      "continuous_usage_stats": {"type": "boolean"}},
                       "additionalProperties": False},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_N},
    "stop": {"type": ["string", "array", "null"], "maxItems": 4, "items": {"type": "string"}},
    "presence_penalty": {**_NUM, "minimum": -2, "maximum": 2},
    "frequency_penalty": {**_NUM, "minimum": -2, "maximum": 2},
    "seed": {"type": ["integer", "null"]},
    "user": {"type": ["string", "null"]},
    "logit_bias": {"type": ["object", "null"]},
    "logprobs": {"type": ["boolean", "integer", "null"]},
    "metadata": {"type": ["object", "null"]},
    "service_tier": {"type": ["string", "null"]},
    "top_k": {"type": ["integer", "null"], "minimum": -1},
    "reasoning_effort": {"type": ["string", "null"], "maxLength": 32},
}
_TOOL_CALL = {"type": "object", "required": ["id", "function"],
              "properties": {"id": {"type": "string"}, "type": {"type": "string"},
                             "function": {"type": "object", "required": ["name"],
                                          "properties": {"name": {"type": "string"},
                                                         "arguments": {"type": "string"}}}}}
_CONTENT_PART = {"type": "object", "required": ["type"],
                 "properties": {"type": {"type": "string"}, "text": {"type": "string"}}}
CHAT_SCHEMA = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": False,
    "properties": {
        **_COMMON,
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        "response_format": {"type": ["object", "null"]},
        "tools": {"type": ["array", "null"]},
        "tool_choice": {"type": ["string", "object", "null"]},
        "parallel_tool_calls": {"type": ["boolean", "null"]},
        "store": {"type": ["boolean", "null"]},
        "messages": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "required": ["role"],
                "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                    "content": {"type": ["string", "array", "null"], "items": _CONTENT_PART},
                    "name": {"type": "string"},
                    "tool_call_id": {"type": "string"},
                    "tool_calls": {"type": ["array", "null"], "items": _TOOL_CALL},
                },
            },
        },
    },
}
COMPLETION_SCHEMA = {
    "type": "object",
    "required": ["model", "prompt"],
    "additionalProperties": False,
    "properties": {
        **_COMMON,
        "prompt": {"type": ["string", "array"], "minItems": 1, "items": {"type": "string"}},
        "echo": {"type": ["boolean", "null"]},
        "suffix": {"type": ["string", "null"]},
        "best_of": {"type": ["integer", "null"], "minimum": 1, "maximum": 1},
    },
}
_TOKENS = {"type": "array", "minItems": 1, "maxItems": 8192,
           "items": {"type": "integer", "minimum": 0}}
EMBEDDING_SCHEMA = {   # POST /v1/embeddings (gateway/handlers/embeddings.py)
    "type": "object",
    "required": ["model", "input"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "input": {"anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "minItems": 1, "maxItems": 2048,
             "items": {"type": "string", "minLength": 1}},
            _TOKENS,
            {"type": "array", "minItems": 1, "maxItems": 2048, "items": _TOKENS}]},
        "encoding_format": {"enum": ["float", "base64", None]},
        "dimensions": {"type": ["integer", "null"], "minimum": 1},
        "user": {"type": ["string", "null"]},
    },
}
_SCHEMAS = {"chat": CHAT_SCHEMA, "completion": COMPLETION_SCHEMA, "embedding": EMBEDDING_SCHEMA}
_FAST = {kind: fastjsonschema.compile(schema) for kind, schema in _SCHEMAS.items()}
_FIELDS = {kind: frozenset(schema["properties"]) for kind, schema in _SCHEMAS.items()}

# Error messages quote at most a few dozen characters of the offending value.
_SHORT = reprlib.Repr(maxlevel=2, maxdict=4, maxlist=4, maxtuple=4, maxset=4,
                      maxstring=40, maxlong=40, maxother=40)
_TYPE_NAMES = {"string": "a string", "number": "a number", "integer": "an integer",
               "boolean": "a boolean", "object": "an object", "array": "an array",
               "null": "null"}
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_HUGE_EXPONENTS = (b"e000", b"E000", b"e+000", b"E+000")
_LONG_MANTISSA = b"0" * 200
_STRUCTURE = bytes(b for b in range(256) if b not in b'"\\[{')   # bytes to delete
_executor: ThreadPoolExecutor | None = None


@contextmanager
def _gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _invalid_json(detail: str, what: str) -> APIError:
    return APIError(400, f"We could not parse the JSON {what} ({detail}).", code="invalid_json")


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed: numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:   # inf - inf is nan
        raise ValueError(f"the number {text[:20]}… is too large: numbers must be finite")
    return value


def _may_overflow(raw: bytes) -> bool:
    """True when some number literal might overflow to infinity (a 3-digit exponent or a
    200-digit mantissa). Cheap: one translate and a few substring searches."""
    zeroed = raw.translate(_DIGITS_TO_ZERO)
    return any(p in zeroed for p in _HUGE_EXPONENTS) or _LONG_MANTISSA in zeroed


def _int(text: str) -> int:
    return int(text)


# The event loop's decoders, built once (json.loads with hooks builds one per call).
_STRICT = json.JSONDecoder(parse_constant=_no_constant)
_OVERFLOW_CHECKED = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def _containers(raw: bytes) -> int:
    """How many objects/arrays ``raw`` holds: brackets outside strings (C-speed)."""
    naive = raw.count(b"[") + raw.count(b"{")
    if naive <= MAX_CONTAINERS:
        return naive
    marks = raw.translate(None, _STRUCTURE).replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(marks.split(b'"')[0::2])
    return outside.count(b"[") + outside.count(b"{")


def _too_deep(obj: Any, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (iterative, one level at a time)."""
    level = [obj]
    for _ in range(limit):
        kids: list[Any] = []
        for container in level:
            kids.extend(container.values() if type(container) is dict else container)
        level = [k for k in kids if type(k) is dict or type(k) is list]
        if not level:
            return False
    return True


def loads(raw: bytes | str, what: str = "body of your request",
          preemptible: bool = False) -> Any:
    """Decode JSON strictly: finite numbers only, at most MAX_CONTAINERS objects/arrays
    and MAX_DEPTH levels; else a 400. ``preemptible`` (in a worker thread): every number
    goes through a Python hook, where the interpreter can hand the GIL to the event loop."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    containers = _containers(raw)
    if containers > MAX_CONTAINERS:
        raise _invalid_json(f"more than {MAX_CONTAINERS} objects and arrays", what)
    if preemptible:   # a worker thread: a decoder of its own
        decoder = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float,
                                   parse_int=_int)
    else:
        decoder = _OVERFLOW_CHECKED if _may_overflow(raw) else _STRICT
    try:
        # what json.loads does with bytes, without building a decoder per call
        data = decoder.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError:
        raise _invalid_json(f"nested more than {MAX_DEPTH} levels deep", what) from None
    except (ValueError, UnicodeDecodeError) as exc:
        detail = str(exc)
        if "integer string conversion" in detail:
            detail = "an integer has more than 4300 digits"
        raise _invalid_json(detail[:200], what) from None
    # At most MAX_DEPTH levels need at least MAX_DEPTH brackets: most bodies skip the walk.
    if isinstance(data, (dict, list)) and containers > MAX_DEPTH and _too_deep(data, MAX_DEPTH):
        raise _invalid_json(f"nested more than {MAX_DEPTH} levels deep", what)
    return data


def parse_json(body: bytes, preemptible: bool = False) -> dict[str, Any]:
    """Decode a JSON object body or raise a 400 that says what is wrong."""
    with _gc_paused():
        return _parse_json(body, preemptible)


def _parse_json(body: bytes, preemptible: bool) -> dict[str, Any]:
    """:func:`parse_json` without pausing the garbage collector (the caller does)."""
    if not body:
        raise APIError(400, "We could not parse the JSON body of your request: the body is "
                            "empty. Send a JSON object.", code="invalid_json")
    data = loads(body, preemptible=preemptible)
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


def parse_and_validate(kind: str, body: bytes, preemptible: bool = False,
                       policy=None) -> dict[str, Any]:
    """:func:`parse_json` then :func:`validate`, with the garbage collector paused once.
    ``policy(model)`` says what to do with unknown fields (default: refuse)."""
    with _gc_paused():
        data = _parse_json(body, preemptible)
        model = data.get("model")
        validate(kind, data, policy(model) if policy and type(model) is str else "refuse")
    return data


def params_policy(gateway):
    """``policy(model)`` for unknown request fields: the model's ``unknown_params``, else
    its backend's default (``unknown_params`` attribute), else refuse."""
    def policy(model: str) -> str:
        cfg = gateway.config.model(model)
        if cfg is None:
            return "refuse"
        return cfg.unknown_params or getattr(gateway.backends.get(model), "unknown_params",
                                             "refuse")
    return policy


def check_backend(backend, data: dict[str, Any]) -> None:
    """What the validated body asks that this model's backend cannot do: a 400."""
    n = data.get("n")
    if n is not None and n > getattr(backend, "max_n", 1):
        raise APIError(400, f"Invalid value for 'n': this model returns at most "
                            f"{getattr(backend, 'max_n', 1)} choice(s) per request.",
                       param="n", code="unsupported_value")
    check = getattr(backend, "check", None)
    if check is not None:   # the backend's own refusals (llamacpp), before any admission
        check(data)


async def _offload(fn, *args):
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="validate")
    return await asyncio.get_running_loop().run_in_executor(_executor, fn, *args)


async def parse_and_validate_async(kind: str, body: bytes, policy=None) -> dict[str, Any]:
    """:func:`parse_and_validate`; a body over OFFLOAD_BYTES is handled in a worker thread."""
    if len(body) <= OFFLOAD_BYTES:
        return parse_and_validate(kind, body, False, policy)
    return await _offload(parse_and_validate, kind, body, True, policy)


async def loads_async(raw: str | bytes, what: str) -> Any:
    """:func:`loads`; a message over OFFLOAD_BYTES is decoded in a worker thread."""
    if len(raw) <= OFFLOAD_BYTES:
        return loads(raw, what)

    def work():
        with _gc_paused():
            return loads(raw, what, True)
    return await _offload(work)


async def validate_async(kind: str, data: dict[str, Any], size: int,
                         unknown: str = "refuse") -> None:
    """:func:`validate`; for a body of over OFFLOAD_BYTES (``size``) in a worker thread."""
    if size <= OFFLOAD_BYTES:
        return validate(kind, data, unknown)
    await _offload(validate, kind, data, unknown)


def validate(kind: str, data: dict[str, Any], unknown: str = "refuse") -> None:
    """Validate a chat/completion body; raise a 400 naming the first bad parameter.

    Known fields are checked strictly. Fields the gateway does not know follow
    ``unknown``: "refuse" (400), "drop" (removed from ``data``) or "pass" (kept
    unchecked for the backend; :func:`loads` has bounded their size and depth)."""
    extra = data.keys() - _FIELDS[kind]
    checked = data
    if extra:   # checked first: an unknown field is the likeliest mistake
        if unknown == "refuse":
            raise _unknown(extra, "")
        checked = {k: v for k, v in data.items() if k not in extra}
    try:
        _FAST[kind](checked)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _explain(exc) from None
    if kind == "embedding":
        _check_token_ids(checked["input"])
    if extra and unknown == "drop":
        for name in extra:
            del data[name]


def _check_token_ids(value: Any) -> None:
    """Token ids are integers: JSON Schema's "integer" also takes 1.0, which the
    embeddings code cannot use (a TypeError, a 500, before this check)."""
    if type(value) is not list or type(value[0]) is str:
        return
    rows = value if type(value[0]) is list else [value]
    for i, row in enumerate(rows):
        if float in set(map(type, row)):     # C speed: bodies hold up to ~500k ids
            j = next(j for j, t in enumerate(row) if type(t) is float)
            param = f"input[{i}][{j}]" if rows is value else f"input[{j}]"
            raise APIError(400, f"Invalid type for '{param}': expected an integer (a token "
                                f"id), but got a number instead.", param=param,
                           code="invalid_type")


def _unknown(extra: set[str], prefix: str) -> APIError:
    names = heapq.nsmallest(3, extra)   # never sort a huge set
    more = f" and {len(extra) - len(names)} more" if len(extra) > len(names) else ""
    shown = ", ".join(_SHORT.repr(n)[1:-1] for n in names)
    return APIError(400, f"Unrecognized request argument supplied: {shown}{more}",
                    param=prefix + names[0][:100], code="unknown_parameter")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _explain(exc: fastjsonschema.JsonSchemaValueException) -> APIError:
    """One OpenAI-style 400 for the first schema error; the value is quoted, shortened."""
    param = exc.name[len("data"):].lstrip(".") or None
    rule, limit, value = exc.rule, exc.rule_definition, exc.value
    shown = _SHORT.repr(value)
    if rule == "required":
        schema = exc.definition
        missing = next(k for k in schema["required"] if k not in value)
        full = f"{param}.{missing}" if param else missing
        return APIError(400, f"Missing required parameter: '{full}'.", param=full,
                        code="missing_required_parameter")
    if rule == "additionalProperties":
        allowed = exc.definition.get("properties", {})
        return _unknown(set(value) - set(allowed), f"{param}." if param else "")
    if rule == "type":
        types = limit if isinstance(limit, list) else [limit]
        expected = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
        return APIError(400, f"Invalid type for '{param}': expected {expected}, but got "
                             f"{_type_name(value)} instead.", param=param, code="invalid_type")
    if rule in ("maxItems", "minItems"):
        bound = "maximum" if rule == "maxItems" else "minimum"
        what = "too long" if rule == "maxItems" else "too short"
        return APIError(400, f"Invalid value for '{param}': array {what}. Expected an array "
                             f"with {bound} length {limit}, but got an array with length "
                             f"{len(value)} instead.", param=param, code="invalid_value")
    if rule == "minimum":
        detail = f"{shown} is less than the minimum of {limit}"
    elif rule == "maximum":
        detail = f"{shown} is greater than the maximum of {limit}"
    elif rule == "minLength":
        detail = f"{shown} is too short (at least {limit} characters)"
    elif rule == "enum":
        detail = f"{shown} is not one of {', '.join(repr(v) for v in limit)}"
    else:
        detail = f"{shown} is not allowed here ({rule})"
    return APIError(400, f"Invalid value for '{param}': {detail}.", param=param,
                    code="invalid_value")
