"""The OpenAI Responses API (``POST /v1/responses``) translated to and from the
gateway's chat request and Chunk stream: pure functions and one state machine, no I/O.

- :func:`to_chat` turns a Responses request body into a Chat Completions body (what the
  :class:`gateway.relay.pipeline.RequestPipeline` validates and every backend serves),
  or raises a 400: the service is stateless and keeps no content, so whatever refers to
  a stored response, item, conversation or prompt is refused with a message saying the
  client must send the whole context; built-in tools (web search, file search, computer
  use, code interpreter...) are refused by name.
- :class:`ResponseBuilder` turns the Chunks of the generation back into the Responses
  output items (``message`` with ``output_text``, ``function_call``), and, for a stream,
  into the typed events in order, each with its ``sequence_number``.

The response object always says ``"store": false``.
"""
from __future__ import annotations

import time
from typing import Any

from gateway.errors import APIError
from gateway.http.requestid import token_hex
from gateway.relay.sse_events import (HOLE, event_template, json_string, json_text,
                                      sse_event)
from gateway.types import Chunk, Usage

NO_CONTENT_KEPT = ("This service keeps no content: responses are not stored, so there is "
                   "nothing to refer back to. Send the whole context in `input` with every "
                   "request (as Codex-style clients do) and leave out `{field}`.")

# Built-in tools of the hosted Responses API: each needs a service the gateway does not
# run (or stored files); named in the 400.
BUILTIN_TOOLS = {
    "web_search": "web search", "web_search_preview": "web search",
    "web_search_preview_2025_03_11": "web search", "web_search_2025_08_26": "web search",
    "file_search": "file search", "computer_use_preview": "computer use",
    "computer_use": "computer use", "computer": "computer use",
    "code_interpreter": "code interpreter", "image_generation": "image generation",
    "mcp": "remote MCP", "local_shell": "local shell", "shell": "shell",
    "apply_patch": "apply patch", "custom": "custom (free-form) tool",
}

# Request fields accepted and not forwarded (what they ask is a no-op here, or the
# default): documented in docs/responses.md.
IGNORED = frozenset({"store", "include", "truncation", "user", "safety_identifier",
                     "prompt_cache_key", "prompt_cache_retention", "service_tier",
                     "reasoning", "top_logprobs", "max_tool_calls", "stream_options"})
# Fields that only make sense with stored state.
STATEFUL = ("previous_response_id", "conversation", "prompt")
KNOWN = frozenset({"model", "input", "instructions", "tools", "tool_choice",
                   "parallel_tool_calls", "text", "max_output_tokens", "temperature",
                   "top_p", "metadata", "stream", "background", *STATEFUL}) | IGNORED


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _stateless(field: str) -> APIError:
    return _bad(NO_CONTENT_KEPT.format(field=field), param=field, code="stateless_service")


def _text_of(content: Any, param: str) -> str | list:
    """A message's content as chat content: a string, or a list of chat parts when it
    holds an image."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"Invalid type for '{param}': expected a string or an array of content "
                   "parts.", param)
    parts: list[dict] = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise _bad(f"Invalid type for '{where}': expected an object.", where)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"Missing or invalid '{where}.text': expected a string.", where)
            parts.append({"type": "text", "text": text})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image":
            if part.get("file_id"):
                raise _stateless(f"{where}.file_id")
            url = part.get("image_url")
            if not isinstance(url, str):
                raise _bad(f"'{where}' needs an 'image_url' (a URL or a data: URL).", where)
            image = {"url": url}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            raise _bad(f"'{where}': file inputs (input_file) are not supported by this "
                       "service; send the file's text as input_text.", where,
                       "unsupported_value")
        else:
            raise _bad(f"Invalid value for '{where}.type': {kind!r} is not a supported "
                       "content part (input_text, output_text, input_image).", where)
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any, param: str) -> str:
    """A function_call_output's ``output`` (a string, or text parts) as a tool message."""
    if isinstance(output, str):
        return output
    content = _text_of(output, param)
    if not isinstance(content, str):
        raise _bad(f"'{param}': a function call output may hold text only.", param)
    return content


def _messages(items: Any, instructions: Any) -> list[dict]:
    messages: list[dict] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("Invalid type for 'instructions': expected a string.", "instructions")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list) or not items:
        raise _bad("'input' must be a string or a non-empty array of input items.", "input")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"Invalid type for '{where}': expected an object.", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"Invalid value for '{where}.role': {role!r} (expected user, "
                           "assistant, system or developer).", where)
            content = _text_of(item.get("content"), f"{where}.content")
            if role == "assistant" and not isinstance(content, str):
                raise _bad(f"'{where}.content': an assistant message holds text only.", where)
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            args = item.get("arguments", "")
            if not isinstance(call_id, str) or not isinstance(name, str) \
                    or not isinstance(args, str):
                raise _bad(f"'{where}': a function_call needs 'call_id', 'name' and "
                           "'arguments' strings.", where)
            call = {"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": args}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and \
                    isinstance(last.get("content") or "", str):
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise _bad(f"'{where}': a function_call_output needs a 'call_id' string.",
                           where)
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _output_text(item.get("output", ""),
                                                     f"{where}.output")})
        elif kind == "reasoning":
            continue   # an earlier turn's reasoning (often encrypted): not model input here
        elif kind == "item_reference":
            raise _stateless(f"{where} (item_reference)")
        else:
            raise _bad(f"Invalid value for '{where}.type': {kind!r} is not supported "
                       "(message, function_call, function_call_output).", where,
                       "unsupported_value")
    if not messages:
        raise _bad("'input' holds no message.", "input")
    return messages


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise _bad("Invalid type for 'tools': expected an array.", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in BUILTIN_TOOLS:
            raise _bad(f"The built-in tool {kind!r} ({BUILTIN_TOOLS[kind]}) is not available "
                       "on this service: only function tools are. Define it as a function "
                       "tool your client runs.", where, "unsupported_tool")
        if kind != "function":
            raise _bad(f"Invalid value for '{where}.type': {kind!r} is not supported; only "
                       "function tools are.", where, "unsupported_tool")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"Missing '{where}.name'.", where)
        fn: dict = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind in BUILTIN_TOOLS:
        raise _bad(f"The built-in tool {kind!r} ({BUILTIN_TOOLS[kind]}) is not available on "
                   "this service.", "tool_choice", "unsupported_tool")
    raise _bad("Invalid value for 'tool_choice': expected auto, none, required or "
               '{"type": "function", "name": ...}.', "tool_choice")


def _response_format(text: Any) -> dict | None:
    if not isinstance(text, dict):
        raise _bad("Invalid type for 'text': expected an object.", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise _bad("'text.format' of type json_schema needs a 'name' and a 'schema' "
                       "object.", "text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "description", "strict")
                  if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("Invalid value for 'text.format.type': expected text, json_object or "
               "json_schema.", "text.format")


def to_chat(body: Any) -> dict:
    """The Chat Completions body for a Responses request (400 for what this service
    cannot or will not do). The chat body is then validated as any other."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    for field in STATEFUL:
        if body.get(field) is not None:
            raise _stateless(field)
    if body.get("background"):
        raise _bad("Background responses are not available: this service keeps no content "
                   "to fetch later. Stream the response instead (stream: true).",
                   "background", "stateless_service")
    unknown = sorted(body.keys() - KNOWN)
    if unknown:
        raise _bad(f"Unrecognized request argument supplied: {', '.join(unknown)}",
                   unknown[0], "unknown_parameter")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if "input" not in body:
        raise _bad("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    chat: dict[str, Any] = {"model": body["model"],
                            "messages": _messages(body["input"], body.get("instructions"))}
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("parallel_tool_calls") is not None and chat.get("tools"):
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("text") is not None:
        fmt = _response_format(body["text"])
        if fmt is not None:
            chat["response_format"] = fmt
    for src, dst in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"),
                     ("top_p", "top_p")):
        if body.get(src) is not None:
            chat[dst] = body[src]
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise _bad("Invalid type for 'metadata': expected an object.", "metadata")
    if body.get("stream"):
        chat["stream"] = True
    return chat


def response_usage(usage: Usage) -> dict:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens}


# The events that open a stream, with the same response object (encoded once).
_OPENING = tuple(event_template(kind, {"type": kind, "sequence_number": HOLE,
                                       "response": HOLE}, 2)
                 for kind in ("response.created", "response.in_progress"))


def _message_event(kind: str, holes: int, **payload) -> str:
    """The template of one event of a message item (see ``_MESSAGE``)."""
    template = event_template(kind, {"type": kind, "sequence_number": HOLE, **payload},
                              holes)
    assert "%%" not in template      # filled in two steps (the item's, then the event's)
    return template


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


# The events of a message item, made once: filled with the sequence number, the item's
# id and output index (and its text), as :meth:`ResponseBuilder._event` would encode them.
_MESSAGE = {
    "added": _message_event("response.output_item.added", 3, output_index=HOLE, item={
        "id": HOLE, "type": "message", "status": "in_progress", "role": "assistant",
        "content": []}),
    "part_added": _message_event("response.content_part.added", 3, item_id=HOLE,
                                 output_index=HOLE, content_index=0, part=_text_part("")),
    "delta": _message_event("response.output_text.delta", 4, item_id=HOLE,
                            output_index=HOLE, content_index=0, delta=HOLE, logprobs=[]),
    "text_done": _message_event("response.output_text.done", 4, item_id=HOLE,
                                output_index=HOLE, content_index=0, text=HOLE, logprobs=[]),
    "part_done": _message_event("response.content_part.done", 4, item_id=HOLE,
                                output_index=HOLE, content_index=0, part=_text_part(HOLE)),
    "item_done": _message_event("response.output_item.done", 4, output_index=HOLE, item={
        "id": HOLE, "type": "message", "status": "completed", "role": "assistant",
        "content": [_text_part(HOLE)]}),
}


class ResponseBuilder:
    """The response object and its output items, built from the generation's Chunks;
    with ``events`` (a stream), :meth:`add` also returns the typed SSE events, encoded
    (``event:`` and ``data:`` lines), each payload with its ``type`` and
    ``sequence_number``. A text delta, the event sent per token, fills a template made
    when its message opens.

    Output items follow the generation: reasoning text (a backend's
    ``reasoning_content``) opens a ``reasoning`` item (one ``reasoning_text`` part, with
    ``response.reasoning_text.delta`` events), text a ``message`` item (one
    ``output_text`` part); each tool call opens a ``function_call`` item; an item is done
    when the next one opens or the generation ends."""

    def __init__(self, body: dict, model: str, events: bool = False) -> None:
        self.id = "resp_" + token_hex(24)
        self.created_at = int(time.time())
        self.body, self.model, self.events = body, model, events
        self.output: list[dict] = []
        self.seq = 0
        self.started = False
        self._open: dict | None = None          # the item receiving output
        self._text: list[str] = []              # the open message's (or reasoning's) text
        self._calls: dict[int, dict] = {}       # chat tool-call index -> item
        self._delta = ""                        # the open message's text-delta template

    # -- the response object -----------------------------------------------------------
    def response(self, status: str = "in_progress", usage: Usage | None = None,
                 finish_reason: str | None = None, error: dict | None = None) -> dict:
        body = self.body
        fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) \
            else None
        incomplete = None
        if status == "incomplete":
            incomplete = {"reason": "content_filter" if finish_reason == "content_filter"
                          else "max_output_tokens"}
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "background": False, "error": error,
            "incomplete_details": incomplete, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
            "model": self.model, "output": list(self.output),
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "store": False, "temperature": body.get("temperature", 1.0),
            "text": {"format": fmt or {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": response_usage(usage) if usage is not None else None,
            "user": None, "metadata": body.get("metadata") or {},
        }

    @staticmethod
    def status_for(finish_reason: str | None) -> str:
        return "incomplete" if finish_reason in ("length", "content_filter") else "completed"

    # -- events --------------------------------------------------------------------------
    def _event(self, out: list, kind: str, **payload) -> None:
        if self.events:
            out.append(sse_event(kind, {"type": kind, "sequence_number": self.seq, **payload}))
            self.seq += 1

    def start(self) -> list:
        """``response.created`` and ``response.in_progress`` (once)."""
        out: list = []
        if not self.started:
            self.started = True
            if self.events:
                response = json_text(self.response())   # the same in both
                for template in _OPENING:
                    out.append(template % (self.seq, response))
                    self.seq += 1
        return out

    def _index(self, item: dict) -> int:
        return self.output.index(item)

    def _close(self, out: list) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        index = self._index(item)
        item["status"] = "completed"
        if item["type"] == "message":
            text = "".join(self._text)
            self._text = []
            item["content"] = [_text_part(text)]
            if self.events:
                seq, item_id, encoded = self.seq, json_string(item["id"]), json_string(text)
                out.append(_MESSAGE["text_done"] % (seq, item_id, index, encoded))
                out.append(_MESSAGE["part_done"] % (seq + 1, item_id, index, encoded))
                out.append(_MESSAGE["item_done"] % (seq + 2, index, item_id, encoded))
                self.seq = seq + 3
            return
        if item["type"] == "reasoning":
            text = "".join(self._text)
            self._text = []
            part = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            self._event(out, "response.reasoning_text.done", item_id=item["id"],
                        output_index=index, content_index=0, text=text)
            self._event(out, "response.content_part.done", item_id=item["id"],
                        output_index=index, content_index=0, part=part)
        else:
            self._event(out, "response.function_call_arguments.done", item_id=item["id"],
                        output_index=index, name=item["name"], arguments=item["arguments"])
        self._event(out, "response.output_item.done", output_index=index, item=dict(item))

    def _open_message(self, out: list) -> dict:
        item = self._open
        if item is not None and item["type"] == "message":
            return item
        self._close(out)
        item = self._open = {"id": "msg_" + token_hex(24), "type": "message",
                             "status": "in_progress", "role": "assistant", "content": []}
        self.output.append(item)
        index = self._index(item)
        if self.events:
            seq, item_id = self.seq, json_string(item["id"])
            out.append(_MESSAGE["added"] % (seq, index, item_id))
            out.append(_MESSAGE["part_added"] % (seq + 1, item_id, index))
            self.seq = seq + 2
            self._delta = _MESSAGE["delta"] % ("%s", item_id, index, "%s")
        return item

    def _text_delta(self, out: list, text: str) -> None:
        item = self._open
        if item is None or item["type"] != "message":
            self._open_message(out)
        self._text.append(text)
        if self.events:
            seq = self.seq
            out.append(self._delta % (seq, json_string(text)))
            self.seq = seq + 1

    def _reasoning_delta(self, out: list, text: str) -> None:
        item = self._open
        if item is None or item["type"] != "reasoning":
            self._close(out)
            item = self._open = {"id": "rs_" + token_hex(24), "type": "reasoning",
                                 "summary": [], "content": [], "status": "in_progress"}
            self.output.append(item)
            self._event(out, "response.output_item.added", output_index=self._index(item),
                        item={**item, "content": []})
            self._event(out, "response.content_part.added", item_id=item["id"],
                        output_index=self._index(item), content_index=0,
                        part={"type": "reasoning_text", "text": ""})
        self._text.append(text)
        self._event(out, "response.reasoning_text.delta", item_id=item["id"],
                    output_index=self._index(item), content_index=0, delta=text)

    def _call_delta(self, out: list, delta: dict, order: int) -> None:
        if not isinstance(delta, dict):
            return
        key = delta.get("index", order)
        fn = delta.get("function") if isinstance(delta.get("function"), dict) else {}
        item = self._calls.get(key)
        if item is None:
            self._close(out)
            item = self._calls[key] = self._open = {
                "id": "fc_" + token_hex(24), "type": "function_call",
                "status": "in_progress", "arguments": "",
                "call_id": delta.get("id") or "call_" + token_hex(12),
                "name": fn.get("name") or ""}
            self.output.append(item)
            self._event(out, "response.output_item.added", output_index=self._index(item),
                        item=dict(item))
            name = None
        else:
            name = fn.get("name")
            if delta.get("id"):
                item["call_id"] = delta["id"]
        if name:
            item["name"] += name
        args = fn.get("arguments")
        if args:
            item["arguments"] += args
            self._event(out, "response.function_call_arguments.delta", item_id=item["id"],
                        output_index=self._index(item), delta=args)

    def add(self, chunk: Chunk) -> list:
        """Take one chunk (choice 0 only: the Responses API has no ``n``)."""
        out = [] if self.started or not self.events else self.start()
        if chunk.index:
            return out
        delta = chunk.delta
        if delta is None:
            if chunk.text:
                self._text_delta(out, chunk.text)
            return out
        if len(delta) == 1:                  # the usual chunk: text alone
            content = delta.get("content")
            if content:
                self._text_delta(out, content)
                return out
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning and isinstance(reasoning, str):
            self._reasoning_delta(out, reasoning)
        content = delta.get("content")
        if content:
            self._text_delta(out, content)
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):
            self._text_delta(out, refusal)
        calls = delta.get("tool_calls")
        if calls and isinstance(calls, list):
            for order, call in enumerate(calls):
                self._call_delta(out, call, order)
        return out

    def finish(self, usage: Usage, finish_reason: str | None) -> tuple[list, dict]:
        """Close the open item; the final event (``response.completed`` or
        ``response.incomplete``) and the response object."""
        out = self.start() if self.events else []
        self._close(out)
        status = self.status_for(finish_reason)
        obj = self.response(status, usage, finish_reason)
        self._event(out, f"response.{status}", response=obj)
        return out, obj

    def failed(self, error: dict) -> list:
        """The ``response.failed`` event (the stream had started: no HTTP error left)."""
        out = self.start()
        err = {"code": error.get("code") or error.get("type") or "server_error",
               "message": error.get("message") or "The generation failed."}
        self._event(out, "response.failed", response=self.response("failed", error=err))
        return out
