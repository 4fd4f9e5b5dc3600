"""The Anthropic Messages API (``POST /v1/messages``) translated to and from the
gateway's chat request and :class:`gateway.types.Chunk` stream. Pure: no I/O, no state
beyond one response's :class:`MessageStream`.

- :func:`to_chat` turns a Messages request body into an OpenAI-style chat body, which
  the :class:`gateway.relay.pipeline.RequestPipeline` then validates like any other, or
  raises a 400 naming the Anthropic field that is wrong.
- :func:`message_object` builds the non-streaming answer from the accumulated choice.
- :class:`MessageStream` turns Chunks into the Messages SSE events (``message_start``,
  ``content_block_start``/``_delta``/``_stop``, ``message_delta``, ``message_stop``).
- :func:`anthropic_error` gives an :class:`APIError` Anthropic's status and error type.

``thinking``: with ``{"type": "enabled", "budget_tokens": n}`` (or ``"adaptive"``), the
reasoning text a backend streams (``reasoning_content``, as vLLM, SGLang and llama.cpp
servers send for reasoning models) comes back as a ``thinking`` block before the answer
(``thinking_delta`` events; its ``signature`` is empty: nothing here signs it); without it
that text is dropped, as Anthropic's API answers. The budget is not forwarded: chat
backends have no such parameter (a reasoning model thinks as its server is set up to).
What is not translated: ``metadata``
(accepted, not forwarded), ``cache_control`` (ignored), ``service_tier``,
``output_config`` and the other newer fields of :data:`_FIELDS` (accepted, ignored), server tools
(web search, code execution, computer use...: a 400 naming the tool), ``document`` and
other non-text, non-image blocks (a 400 naming the block type). ``stop_reason``
``stop_sequence`` needs the backend to say which sequence matched
(``Chunk.stop``: the llamacpp models, vLLM and SGLang do); from one that says only
``stop`` it is ``end_turn``.
"""
from __future__ import annotations

import json
from typing import Any

from gateway.errors import APIError
from gateway.relay.sse_events import HOLE, event_template, json_string, json_text, sse_event
from gateway.types import Chunk, Usage

MAX_STOP_SEQUENCES = 4       # the chat request's ``stop`` limit

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}

# Anthropic's error type for each status (529: the backends are busy).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}
OVERLOADED_CODES = frozenset({"backend_busy", "backend_unavailable", "model_restarting"})


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_request")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                          "a value")


def _text_of(blocks: Any, where: str) -> str:
    """A string, or a list of ``text`` blocks, as one string."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _bad(f"{where}: expected a string or an array of text blocks, got "
                   f"{_type_name(blocks)}.", where)
    parts = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or \
                not isinstance(block.get("text"), str):
            raise _bad(f"{where}.{i}: expected a text block "
                       '({"type": "text", "text": "..."}).', where)
        parts.append(block["text"])
    return "\n".join(parts)


def _image_part(block: dict, where: str) -> dict:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{where}.source: expected an object.", where)
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _bad(f"{where}.source.type: only base64 and url images are supported.", where)
    return {"type": "image_url", "image_url": {"url": url}}


def _content_blocks(content: Any, where: str):
    """Each content block of a message as (its path, its type, the block); 400 unless
    ``content`` is an array."""
    if not isinstance(content, list):
        raise _bad(f"{where}.content: expected a string or an array of content blocks.",
                   f"{where}.content")
    for i, block in enumerate(content):
        yield f"{where}.content.{i}", block.get("type") if isinstance(block, dict) else None, block


def _user_messages(content: Any, where: str) -> list[dict]:
    """One user turn as chat messages: its tool results first (each a ``tool``
    message, as chat requests want them right after the assistant's calls), then the
    user's text and images, if any."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict] = []
    parts: list[dict] = []
    for at, kind, block in _content_blocks(content, where):
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise _bad(f"{at}.tool_use_id: a string is required.", at)
            result = block.get("content", "")
            text = _text_of(result, f"{at}.content") if result is not None else ""
            if block.get("is_error"):
                text = f"Error: {text}"
            tools.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                          "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _bad(f"{at}.type: {kind!r} blocks are not supported here (text, image "
                       "and tool_result are).", at)
    out = tools
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant_message(content: Any, where: str) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict] = []
    for at, kind, block in _content_blocks(content, where):
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _bad(f"{at}: a tool_use block needs a string id and name.", at)
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"],
                                       "arguments": json.dumps(block.get("input") or {})}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _bad(f"{at}.type: {kind!r} blocks are not supported in assistant turns "
                       "(text and tool_use are).", at)
    msg: dict = {"role": "assistant", "content": "".join(texts) if texts or not calls
                 else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise _bad("tools: expected an array.", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"tools.{i}: expected an object.", "tools")
        kind = tool.get("type")
        name = tool.get("name")
        if kind not in (None, "custom"):
            raise _bad(f"tools.{i}: the server tool {kind!r} ({name}) is not available "
                       "here; only client tools with an input_schema are.", "tools")
        if not isinstance(name, str) or not name:
            raise _bad(f"tools.{i}.name: a string is required.", "tools")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"tools.{i}.input_schema: an object (a JSON schema) is required.",
                       "tools")
        fn: dict = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, chat: dict) -> None:
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool",
                                                                  "none"):
        raise _bad("tool_choice: expected {\"type\": \"auto\"|\"any\"|\"tool\"|\"none\"}.",
                   "tool_choice")
    kind = choice["type"]
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _bad("tool_choice.name: a string is required with type \"tool\".",
                       "tool_choice")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        chat["parallel_tool_calls"] = False


_FIELDS = frozenset({"model", "messages", "system", "max_tokens", "stop_sequences", "stream",
                     "temperature", "top_p", "top_k", "tools", "tool_choice", "metadata",
                     *"""thinking service_tier container mcp_servers context_management
                     cache_control output_config output_format speed diagnostics
                     inference_geo user_profile_id workspace_id""".split()})
# Accepted and ignored: the fields after ``metadata`` (the SDK sends some of them).


def to_chat(body: Any, *, count_only: bool = False) -> dict:
    """The chat body for a Messages request body (a 400 naming the field when it is not
    a valid Messages request). ``count_only``: for ``count_tokens`` (no ``max_tokens``)."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise _bad(f"{unknown[0]}: Extra inputs are not permitted.", unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: Field required (a string).", "model")
    chat: dict[str, Any] = {"model": model}
    if not count_only:
        mt = body.get("max_tokens")
        if type(mt) is not int or mt < 1:
            raise _bad("max_tokens: Field required (an integer of at least 1).",
                       "max_tokens")
        chat["max_tokens"] = mt
    messages: list[dict] = []
    system = body.get("system")
    if system is not None:
        text = _text_of(system, "system")
        if text:
            messages.append({"role": "system", "content": text})
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise _bad("messages: Field required (a non-empty array).", "messages")
    for i, turn in enumerate(turns):
        where = f"messages.{i}"
        role = turn.get("role") if isinstance(turn, dict) else None
        if role == "user":
            messages.extend(_user_messages(turn.get("content"), where))
        elif role == "assistant":
            messages.append(_assistant_message(turn.get("content"), where))
        else:
            raise _bad(f"{where}.role: expected \"user\" or \"assistant\".", f"{where}.role")
    chat["messages"] = messages
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences: expected an array of strings.", "stop_sequences")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise _bad(f"stop_sequences: at most {MAX_STOP_SEQUENCES} are supported here.",
                       "stop_sequences")
        if stops:
            chat["stop"] = stops
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if type(value) not in (int, float) or not 0 <= value <= 1:
                raise _bad(f"{name}: expected a number from 0 to 1.", name)
            chat[name] = value
    top_k = body.get("top_k")
    if top_k is not None:
        if type(top_k) is not int or top_k < 0:
            raise _bad("top_k: expected a non-negative integer.", "top_k")
        chat["top_k"] = top_k
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        raise _bad("stream: expected a boolean.", "stream")
    if stream:
        chat["stream"] = True
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
        if chat.get("tool_choice") != "none" and not chat.get("tools"):
            raise _bad("tool_choice: requires tools.", "tool_choice")
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise _bad("metadata: expected an object.", "metadata")
    wants_thinking(body)
    return chat


def wants_thinking(body: dict) -> bool:
    """Whether the request asks for the model's thinking (``thinking`` enabled or
    adaptive); a 400 when ``thinking`` is not a valid setting."""
    thinking = body.get("thinking")
    if thinking is None:
        return False
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled", "adaptive"):
        raise _bad("thinking: expected {\"type\": \"enabled\", \"budget_tokens\": n}, "
                   "{\"type\": \"adaptive\"} or {\"type\": \"disabled\"}.", "thinking")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if type(budget) is not int or budget < 1024:
            raise _bad("thinking.budget_tokens: an integer of at least 1024 is required.",
                       "thinking.budget_tokens")
        max_tokens = body.get("max_tokens")
        if type(max_tokens) is int and budget >= max_tokens:
            raise _bad("thinking.budget_tokens: must be less than max_tokens.",
                       "thinking.budget_tokens")
    return kind != "disabled"


# -- answers ------------------------------------------------------------------------------
def stop_reason(finish_reason: str | None, stop: str | None = None) -> str:
    """Anthropic's ``stop_reason`` for a chat finish reason (and the stop sequence that
    ended the text, when the backend said which)."""
    if stop is not None and finish_reason in (None, "stop"):
        return "stop_sequence"
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def usage_object(usage: Usage) -> dict:
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _tool_input(arguments: str) -> dict:
    """A tool call's arguments as the ``input`` object (not an object: ``{}``)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _reasoning(fields: dict) -> Any:
    """The reasoning text in a chat message or delta (``reasoning_content``, or vLLM's
    newer ``reasoning``), if any."""
    text = fields.get("reasoning_content") or fields.get("reasoning")
    return text if isinstance(text, str) else None


def message_object(msg_id: str, model: str, choice: dict, usage: Usage,
                   thinking: bool = False, stop: str | None = None) -> dict:
    """The Messages answer from an accumulated chat choice
    (:meth:`gateway.relay.streaming.Accumulator.result`); ``thinking``: the request
    asked for it (the backend's reasoning text, if any, is the first block); ``stop``:
    the stop sequence that ended the text, if the backend said which."""
    message = choice.get("message") or {}
    content: list[dict] = []
    reasoning = _reasoning(message) if thinking else None
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or _tool_id(msg_id, len(content)),
                        "name": fn.get("name") or "", "input": _tool_input(fn.get("arguments"))})
    reason = stop_reason(choice.get("finish_reason"), stop)
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason,
            "stop_sequence": stop if reason == "stop_sequence" else None,
            "usage": usage_object(usage)}


def _tool_id(msg_id: str, index: int) -> str:
    return f"toolu_{msg_id.removeprefix('msg_')}_{index}"


event = sse_event   # one SSE event of the Messages stream


PING = event("ping", {"type": "ping"})

# The events of every streamed answer, encoded once: their values filled per answer
# (ids and models with json_string, numbers with str, stop reasons with json_text).
_START = event_template("message_start", {"type": "message_start", "message": {
    "id": HOLE, "type": "message", "role": "assistant", "model": HOLE, "content": [],
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": HOLE, "output_tokens": 0, "cache_creation_input_tokens": 0,
              "cache_read_input_tokens": 0}}}, 3)
_TEXT_START = event_template("content_block_start", {
    "type": "content_block_start", "index": HOLE,
    "content_block": {"type": "text", "text": ""}}, 1)
_TEXT_DELTA = event_template("content_block_delta", {
    "type": "content_block_delta", "index": HOLE,
    "delta": {"type": "text_delta", "text": HOLE}}, 2)
_THINKING_DELTA = event_template("content_block_delta", {
    "type": "content_block_delta", "index": HOLE,
    "delta": {"type": "thinking_delta", "thinking": HOLE}}, 2)
_STOP_BLOCK = event_template("content_block_stop", {"type": "content_block_stop",
                                                    "index": HOLE}, 1)
_END = event_template("message_delta", {
    "type": "message_delta", "delta": {"stop_reason": HOLE, "stop_sequence": HOLE},
    "usage": {"input_tokens": HOLE, "output_tokens": HOLE}}, 4) + \
    event("message_stop", {"type": "message_stop"}).replace("%", "%%")


class MessageStream:
    """The Messages SSE events of one streamed answer, from its Chunks (choice 0).

    :meth:`start` is the ``message_start`` event, :meth:`chunk` the events for one
    Chunk (text becomes a ``text`` block with ``text_delta``s, each tool call a
    ``tool_use`` block with ``input_json_delta``s, reasoning text a ``thinking`` block
    with ``thinking_delta``s when ``thinking``; a new kind of output closes the open
    block), :meth:`end` closes the open block and sends ``message_delta`` and
    ``message_stop``. The events every answer sends fill templates made once."""

    __slots__ = ("msg_id", "model", "input_tokens", "index", "open", "started", "thinking")

    def __init__(self, msg_id: str, model: str, input_tokens: int,
                 thinking: bool = False) -> None:
        self.msg_id, self.model, self.input_tokens = msg_id, model, input_tokens
        self.index = -1         # the current content block
        self.open: Any = None   # "text", "thinking", ("tool", its chat index), or None
        self.started = False
        self.thinking = thinking

    def start(self) -> str:
        self.started = True
        return _START % (json_string(self.msg_id), json_string(self.model),
                         int(self.input_tokens))

    def _close(self) -> str:
        if self.open is None:
            return ""
        self.open = None
        return _STOP_BLOCK % self.index

    def _begin(self, block: dict, open_as: Any) -> str:
        out = self._close()
        self.index += 1
        self.open = open_as
        return out + event("content_block_start", {"type": "content_block_start",
                                                   "index": self.index,
                                                   "content_block": block})

    def chunk(self, chunk: Chunk) -> str:
        if chunk.index:
            return ""
        out = "" if self.started else self.start()
        delta = chunk.delta
        if self.thinking and delta:
            reasoning = _reasoning(delta)
            if reasoning:
                if self.open != "thinking":
                    out += self._begin({"type": "thinking", "thinking": "",
                                        "signature": ""}, "thinking")
                out += _THINKING_DELTA % (self.index, json_string(reasoning))
        text = chunk.text if delta is None else delta.get("content")
        if text:
            if self.open != "text":
                out += self._close()
                self.index += 1
                self.open = "text"
                out += _TEXT_START % self.index
            out += _TEXT_DELTA % (self.index, json_string(text))
        for call in (delta.get("tool_calls") if delta else None) or ():
            if not isinstance(call, dict):
                continue
            key = ("tool", call.get("index", 0))
            fn = call.get("function") or {}
            if self.open != key:
                out += self._begin({"type": "tool_use",
                                    "id": call.get("id") or _tool_id(self.msg_id,
                                                                     self.index + 1),
                                    "name": fn.get("name") or "", "input": {}}, key)
            args = fn.get("arguments")
            if args:
                out += event("content_block_delta", {
                    "type": "content_block_delta", "index": self.index,
                    "delta": {"type": "input_json_delta", "partial_json": args}})
        return out

    def end(self, finish_reason: str | None, usage: Usage, stop: str | None = None) -> str:
        out = ("" if self.started else self.start()) + self._close()
        reason = stop_reason(finish_reason, stop)
        return out + _END % (json_text(reason),
                             json_text(stop if reason == "stop_sequence" else None),
                             int(usage.prompt_tokens), int(usage.completion_tokens))


# -- errors --------------------------------------------------------------------------------
def anthropic_error(err: APIError) -> APIError:
    """``err`` with Anthropic's status and error type: the backends busy or restarting
    (503) is 529 ``overloaded_error``; other statuses keep theirs, with the type Anthropic
    uses for it (5xx: ``api_error``)."""
    status = err.status
    if status == 503 and err.code in OVERLOADED_CODES:
        status = 529
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return APIError(status, err.message, param=err.param, code=err.code, type=kind,
                    headers=err.headers)


def error_body(err: APIError) -> dict:
    """Anthropic's error body (``err`` already through :func:`anthropic_error`)."""
    return {"type": "error", "error": {"type": err.type, "message": err.message}}
