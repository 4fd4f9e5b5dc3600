"""Request validation for the OpenAI-compatible API (JSON Schema).

Valid requests take the fast path: the schema compiled to Python by fastjsonschema
(a few microseconds). Only an invalid request is validated again with jsonschema,
whose detailed errors name the offending parameter, as OpenAI does (400).
"""
from __future__ import annotations

import json
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator

from gateway.errors import APIError

_NUM = {"type": ["number", "null"]}
_COMMON: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"],
                       "properties": {"include_usage": {"type": "boolean"}},
                       "additionalProperties": False},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 1},
    "stop": {"type": ["string", "array", "null"], "items": {"type": "string"}, "maxItems": 4},
    "presence_penalty": {**_NUM, "minimum": -2, "maximum": 2},
    "frequency_penalty": {**_NUM, "minimum": -2, "maximum": 2},
    "seed": {"type": ["integer", "null"]},
    "user": {"type": ["string", "null"]},
    "logit_bias": {"type": ["object", "null"]},
    "logprobs": {"type": ["boolean", "integer", "null"]},
    "metadata": {"type": ["object", "null"]},
    "service_tier": {"type": ["string", "null"]},
}
_CONTENT_PART = {"type": "object", "required": ["type"],
                 "properties": {"type": {"type": "string"}, "text": {"type": "string"}}}
CHAT_SCHEMA = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": False,
    "properties": {
        **_COMMON,
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        "top_logprobs": {"type": ["integer", "null"]},
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
        "prompt": {"type": ["string", "array"], "items": {"type": "string"}, "minItems": 1},
        "echo": {"type": ["boolean", "null"]},
        "suffix": {"type": ["string", "null"]},
        "best_of": {"type": ["integer", "null"], "minimum": 1, "maximum": 1},
    },
}
_VALIDATORS = {"chat": Draft202012Validator(CHAT_SCHEMA),
               "completion": Draft202012Validator(COMPLETION_SCHEMA)}
_FAST = {"chat": fastjsonschema.compile(CHAT_SCHEMA),
         "completion": fastjsonschema.compile(COMPLETION_SCHEMA)}


def parse_json(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body or raise a 400 that says what is wrong."""
    if not body:
        raise APIError(400, "We could not parse the JSON body of your request: the body is "
                            "empty. Send a JSON object.", code="invalid_json")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"We could not parse the JSON body of your request ({exc}).",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


def validate(kind: str, data: dict[str, Any]) -> None:
    """Validate a chat/completion body; raise a 400 naming the first bad parameter."""
    try:
        _FAST[kind](data)
        return
    except fastjsonschema.JsonSchemaException:
        pass  # find and explain the error below
    error = next(iter(sorted(_VALIDATORS[kind].iter_errors(data),
                             key=lambda e: (len(e.absolute_path), str(e.absolute_path)))), None)
    if error is None:
        return
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        param = ".".join(str(p) for p in path + extra[:1])
        raise APIError(400, f"Unrecognized request argument supplied: {', '.join(extra)}",
                       param=param, code="unknown_parameter")
    if error.validator == "required":
        missing = error.message.split("'")[1]
        param = ".".join(str(p) for p in path + [missing])
        raise APIError(400, f"Missing required parameter: '{param}'.", param=param,
                       code="missing_required_parameter")
    param = "".join(f"[{p}]" if isinstance(p, int) else (("." if i else "") + p)
                    for i, p in enumerate(path)) or None
    raise APIError(400, f"Invalid value for '{param}': {error.message}.", param=param,
                   code="invalid_value")
