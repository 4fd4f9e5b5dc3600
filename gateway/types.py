"""Plain data types shared by the core and the plugins."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Principal:
    """Who is calling: an account, and the API key or session it came through."""

    account_id: str
    tier: str
    status: str = "active"
    key_id: str | None = None
    session_id: str | None = None
    roles: tuple[str, ...] = ()
    via: str = "api_key"   # api_key | session
    # Per-key controls (from the key's record, cached with it; empty means none):
    key_limits: tuple[tuple[str, int], ...] = ()   # (requests_per_minute, 10), ...
    allowed_models: tuple[str, ...] = ()
    allowed_cidrs: tuple[str, ...] = ()
    expires_at: float | None = None                 # UNIX time
    scopes: tuple[str, ...] = ()                    # admin API scopes, e.g. admin:read

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def key_limit(self, name: str) -> int:
        """A per-key limit (0: none)."""
        return dict(self.key_limits).get(name, 0)


@dataclass
class GenerationRequest:
    """A validated chat or text completion request, as a backend sees it."""

    kind: str                       # "chat" or "completion"
    model: str
    body: dict[str, Any]            # the validated OpenAI-style body (passed through)
    max_tokens: int | None = None
    request_id: str = ""
    replica: int | None = None      # the replica the fair queue gave it a slot on, if any

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def prompt(self) -> str:
        p = self.body.get("prompt", "")
        return p if isinstance(p, str) else "".join(p)


@dataclass
class Usage:
    """Token counts of one generation; ``estimated`` when the gateway counted them itself."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_openai(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass(slots=True)
class Chunk:
    """One piece of a backend's stream, for one choice: output, and/or a finish reason,
    and/or usage.

    Plain-text backends set only ``text`` (``Chunk("Hel")``, ``Chunk(finish_reason="stop")``,
    ``Chunk(usage=Usage(12, 30))``). Backends that produce more of the OpenAI
    chunk set the optional fields; the gateway relays them unchanged:

    - ``index``: the choice index (``n > 1``); each Chunk is about one choice.
    - ``delta`` (chat only): the choice's delta exactly as OpenAI sends it, e.g.
      ``{"role": "assistant", "content": None, "tool_calls": [{"index": 0,
      "id": "call_1", "type": "function", "function": {"name": "f",
      "arguments": "{\"a\""}}]}``, or ``{"reasoning_content": "..."}``,
      ``{"refusal": "..."}``. When set, it is the delta the client receives and
      ``text`` is not used for the output (keep it equal to ``delta["content"]`` or
      empty). ``None``: the gateway builds ``{"content": text}``.
    - ``logprobs``: the choice's ``logprobs`` object as OpenAI sends it.
    - ``extra``: other top-level fields of the chunk (``system_fingerprint``,
      ``service_tier``, ...), passed through.
    - ``raw``: the upstream's whole chunk, the JSON bytes after ``data:``, for pure
      pass-through: the gateway sends these bytes with only ``id``, ``model``
      (and ``created``) rewritten. The other fields must still describe it (they are
      what accounting reads: output amount, finish_reason, usage).

    - ``stop``: with ``finish_reason`` ``"stop"``, the stop sequence that ended the
      choice, when the backend says which (vLLM's choice ``stop_reason``, SGLang's
      ``matched_stop``); ``None``: the end of the text, or not said. The Messages API
      answers it as ``stop_reason: "stop_sequence"``.

    Accounting reads ``usage``, ``finish_reason`` and the amount of output (content,
    tool-call arguments, reasoning_content and refusal of every choice).
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    index: int = 0
    delta: dict[str, Any] | None = None
    logprobs: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    raw: bytes | None = None
    stop: str | None = None


@dataclass
class Admission:
    """A limiter's answer for one request; handed back to it at settle().

    ``reservation`` is the limiter's own record of what it reserved (opaque to the
    gateway). On a denial (``allowed=False``) the client's error is built from
    ``limit`` (the error ``code``), ``status``, ``message``, ``retry_after`` (seconds;
    a 429 gets ``Retry-After``) and ``param``: the request field to blame, e.g.
    ``"max_tokens"`` or ``"model"`` (``None``: no single field).
    """

    allowed: bool = True
    limiter: str = ""
    reservation: dict[str, Any] = field(default_factory=dict)
    # On denial: which limit, HTTP status, message, seconds until retry, field to blame.
    limit: str = ""
    status: int = 429
    message: str = ""
    retry_after: float = 0.0
    param: str | None = None
    # Headers to add to the response (x-ratelimit-*), and request changes (clamped max_tokens).
    headers: dict[str, str] = field(default_factory=dict)
    max_tokens: int | None = None
