"""The plugin SDK: the one core module a plugin imports (``from gateway import sdk``).

Built-in plugins use nothing else of the core (``tests/test_layers.py`` enforces it), so
what they do, a third-party plugin can do with the same names. Everything below is
re-exported from the module that owns it; the SDK is the stable name.

**Base classes** (a convenience, not a requirement: the gateway accepts any object with
the methods ``gateway/hookspecs.py`` describes, and the ``*Protocol`` classes type
exactly that duck-typed shape):

- :class:`Backend` (:class:`BackendProtocol`): ``start``/``close`` do nothing,
  ``health()`` is ``{"ok": True}``, ``completions`` is derived from ``chat`` (the prompt
  becomes one user message), and ``self.options`` is the model's ``options`` table
  validated against the nested ``Options`` dataclass.
- :class:`Limiter` (:class:`LimiterProtocol`): ``settle``/``close`` do nothing (for
  limiters that reserve nothing); :meth:`Limiter.allow` and :meth:`Limiter.deny` build
  ``Admission`` objects.
- :class:`Authenticator` (:class:`AuthenticatorProtocol`): ``authenticate`` returns
  ``None`` (no opinion).
- :class:`Service` (:class:`ServiceProtocol`): ``start``/``stop`` do nothing.

**Configuration**

- :class:`Options`: subclass it and annotate fields; the subclass becomes a dataclass,
  validated like the config file (unknown keys and wrong types are a
  :class:`ConfigError` naming the key; environment overrides are converted).
- :func:`section_options`: a plugin-owned section (``[mine]``) as typed ``Options``;
  claim its name with the ``config_sections`` hook (an unclaimed section stops the
  gateway). :func:`build_options` validates any table into any dataclass.
- ``Config``, ``ModelConfig``, ``TierConfig``: the core's typed configuration (what the
  hooks' ``config`` argument is, and a tier's limits).

**Data types and errors:** ``Chunk``, ``Usage``, ``GenerationRequest``, ``Principal``,
``Admission``; :func:`deny`; ``APIError`` (an OpenAI-style error with its HTTP status),
``internal_error()`` (a 500 that shows no detail), ``ConfigError``.

**Hooks:** ``hookimpl`` (the marker of hook implementations).

**Streams:** ``parse_event`` (an OpenAI chunk as ``Chunk`` objects), ``choice_text``,
``usage_of``; ``ChunkEncoder`` (``Chunk`` objects as OpenAI SSE events, for a plugin
that serves them, as the model worker does); ``estimate_prompt_tokens`` (the gateway's
estimate of a request's prompt, before a backend counts it).

**Background work:** ``stop_task`` (cancel a task and wait for it), ``WarnOnce`` (a
recurring warning logged at most once per 30 s, with its count).

**Requests and clients:** ``client_ip`` (the caller's address behind
``[server] trusted_proxies``), ``in_networks``.

**Accounts, keys, tiers:** ``StoreError`` (the database is unreachable or failed:
degrade, don't crash), ``KEY_PREFIX``, ``KEY_LIMITS`` (the per-key limit names),
``hash_key`` (how API keys are stored), ``TierPolicy`` (an account's tier and the models
it may use, as ``/v1/models`` sees them). The database itself is the ``store`` argument
of the hooks.

**Namespaces** (modules re-exported whole, for plugins that need many of their names):

- ``sdk.metrics``: the gateway's Prometheus metrics (``sdk.metrics.REPLICA_UP``...);
- ``sdk.workers``: model worker processes (``WorkerSpec``, ``start_workers``,
  ``workers_for``, ``python_module``, the states ``UP``...), for backends whose engine
  runs out of the gateway process.

The heavier names (``metrics``, ``workers``, the store's names, ``TierPolicy``,
``estimate_prompt_tokens``) load on first use, so a process that needs only the light
ones (a model worker) does not load the database driver.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol, runtime_checkable

from gateway.background import WarnOnce, stop_task
from gateway.relay.chunks import choice_text, parse_event, usage_of
from gateway.config import Config, ConfigError, ModelConfig, TierConfig, build_section
from gateway.errors import APIError, internal_error
from gateway.hookspecs import hookimpl
from gateway.http.net import client_ip, in_networks
from gateway.http.sse import ChunkEncoder
from gateway.types import Admission, Chunk, GenerationRequest, Principal, Usage

if TYPE_CHECKING:   # loaded lazily at run time (see _LAZY)
    from gateway import model_workers as workers
    from gateway.obs import metrics
    from gateway.store import StoreError
    from gateway.store.keys import KEY_LIMITS, KEY_PREFIX, hash_key
    from gateway.relay.streaming import estimate_prompt_tokens
    from gateway.relay.tier_policy import TierPolicy

__all__ = ["Admission", "APIError", "Authenticator", "AuthenticatorProtocol", "Backend",
           "BackendProtocol", "Chunk", "ChunkEncoder", "Config", "ConfigError",
           "GenerationRequest", "KEY_LIMITS", "KEY_PREFIX", "Limiter", "LimiterProtocol",
           "ModelConfig", "Options", "Principal", "Service", "ServiceProtocol",
           "StoreError", "TierConfig", "TierPolicy", "Usage", "WarnOnce",
           "build_options", "choice_text", "client_ip", "deny", "estimate_prompt_tokens",
           "hash_key", "hookimpl", "in_networks", "internal_error", "metrics",
           "parse_event", "section_options", "stop_task", "usage_of", "workers"]

# name -> (module, attribute or None for the module itself), imported on first use
_LAZY: dict[str, tuple[str, str | None]] = {
    "metrics": ("gateway.obs.metrics", None),
    "workers": ("gateway.model_workers", None),
    "StoreError": ("gateway.store", "StoreError"),
    "KEY_LIMITS": ("gateway.store.keys", "KEY_LIMITS"),
    "KEY_PREFIX": ("gateway.store.keys", "KEY_PREFIX"),
    "hash_key": ("gateway.store.keys", "hash_key"),
    "estimate_prompt_tokens": ("gateway.relay.streaming", "estimate_prompt_tokens"),
    "TierPolicy": ("gateway.relay.tier_policy", "TierPolicy"),
}


def __getattr__(name: str) -> Any:
    """The heavier re-exports, imported when first asked for (PEP 562)."""
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


@runtime_checkable
class BackendProtocol(Protocol):
    """What the gateway calls on a backend (``register_backends``). Optional too:
    ``capabilities`` (e.g. ``["chat", "completions", "embeddings"]``),
    ``async embeddings(request) -> (vectors, Usage | None)`` and ``check(body)`` (raise
    a 400 ``APIError`` before admission for what the backend cannot do)."""

    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def health(self) -> dict[str, Any]: ...
    def chat(self, request: GenerationRequest) -> AsyncIterator[Chunk]: ...
    def completions(self, request: GenerationRequest) -> AsyncIterator[Chunk]: ...


@runtime_checkable
class LimiterProtocol(Protocol):
    """What the gateway calls on a limiter (``register_limiters``); ``close`` is
    optional."""

    name: str

    async def admit(self, principal: Principal, request: GenerationRequest) -> Admission: ...
    async def settle(self, admission: Admission, usage: Usage, outcome: str) -> None: ...


@runtime_checkable
class AuthenticatorProtocol(Protocol):
    """What the gateway calls on an authenticator (``register_authenticators``)."""

    name: str

    async def authenticate(self, request: Any) -> Principal | None: ...


@runtime_checkable
class ServiceProtocol(Protocol):
    """What the gateway calls on a background service (``register_services``)."""

    name: str

    async def start(self, gateway: Any) -> None: ...
    async def stop(self) -> None: ...


def build_options(cls: type, data: Any, where: str) -> Any:
    """Validate ``data`` (a dict from the config) into the dataclass ``cls``, with the
    config's error style (``where.key: expected float, got 'x'``).

    A thin wrapper over the config's own builder, ``gateway.config.build_section``."""
    return build_section(cls, data, where)


@dataclasses.dataclass
class Options:
    """Typed options of a plugin. Subclass and annotate fields with defaults::

        class Options(sdk.Options):
            delay: float = 0.0
            url: str = ""

    Subclasses become dataclasses automatically. Set ``ignore_unknown = True`` on a
    subclass to drop keys it does not declare instead of refusing them."""

    ignore_unknown = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__dataclass_fields__" not in cls.__dict__:
            dataclasses.dataclass(cls)

    @classmethod
    def parse(cls, data: Any, where: str = "options") -> "Options":
        """Build the options from a config table; a :class:`ConfigError` names the key."""
        if data is None:
            data = {}
        if cls.ignore_unknown and isinstance(data, dict):
            names = {f.name for f in dataclasses.fields(cls)}
            data = {k: v for k, v in data.items() if k in names}
        return build_options(cls, data, where)


def section_options(config: Any, section: str, cls: type[Options]) -> Options:
    """A plugin-owned config section (``[section]`` in ``config.extra``) as typed options.
    Claim the section with the ``config_sections`` hook."""
    extra = getattr(config, "extra", None) or {}
    return cls.parse(extra.get(section, {}), section)


def deny(limit: str, message: str, status: int = 429, retry_after: float = 0.0, *,
         param: str | None = None, headers: dict[str, str] | None = None,
         limiter: str = "") -> Admission:
    """An explicit denial: ``limit`` is the error ``code`` the client sees, ``status``
    the HTTP status (429 sets ``Retry-After`` from ``retry_after``), ``param`` the
    request field to blame (e.g. ``"max_tokens"``)."""
    return Admission(allowed=False, limiter=limiter, limit=limit, status=status,
                     message=message, retry_after=retry_after, param=param,
                     headers=dict(headers or {}))


class Backend:
    """Base class of a backend serving one ``[[models]]`` entry.

    Override ``chat`` (an async generator of :class:`Chunk`); override ``completions``
    too when the model takes raw prompts. ``self.options`` holds the validated
    ``[[models]] options`` (see the nested ``Options``)."""

    Options: type[Options] = Options

    def __init__(self, model_config: Any, config: Any = None) -> None:
        self.name = model_config.name
        self.model_config = model_config
        self.config = config
        self.options = self.Options.parse(getattr(model_config, "options", None) or {},
                                          f"models.{self.name}.options")

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def health(self) -> dict[str, Any]:
        return {"ok": True}

    def chat(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        raise NotImplementedError(f"{type(self).__name__} does not implement chat()")

    async def completions(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """A text completion through ``chat``: the prompt becomes one user message;
        the other fields (max_tokens, temperature, stop, ...) are kept."""
        body = {k: v for k, v in request.body.items()
                if k not in ("prompt", "suffix", "echo", "best_of", "logprobs")}
        body["messages"] = [{"role": "user", "content": request.prompt}]
        chat_request = GenerationRequest("chat", request.model, body, request.max_tokens,
                                         request.request_id)
        stream = self.chat(chat_request)
        try:
            async for chunk in stream:
                yield chunk
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()   # closing early cancels the generation at once


class Limiter:
    """Base class of a limiter. Override ``admit``; override ``settle`` when ``admit``
    reserves something that must be reconciled or released."""

    name = ""

    async def admit(self, principal: Principal, request: GenerationRequest) -> Admission:
        raise NotImplementedError(f"{type(self).__name__} does not implement admit()")

    async def settle(self, admission: Admission, usage: Usage, outcome: str) -> None:
        pass

    async def close(self) -> None:
        pass

    def allow(self, **fields: Any) -> Admission:
        """Admit (``headers``, ``max_tokens``, ``reservation`` may be given)."""
        return Admission(allowed=True, limiter=self.name, **fields)

    def deny(self, limit: str, message: str, status: int = 429, retry_after: float = 0.0,
             *, param: str | None = None, headers: dict[str, str] | None = None) -> Admission:
        """Deny (see :func:`deny`)."""
        return deny(limit, message, status, retry_after, param=param, headers=headers,
                    limiter=self.name)


class Authenticator:
    """Base class of an authenticator: return a :class:`Principal`, ``None`` (not mine:
    the next authenticator tries), or raise :class:`APIError` (e.g. 401)."""

    name = ""

    async def authenticate(self, request: Any) -> Principal | None:
        return None


class Service:
    """Base class of a background service living as long as the gateway process."""

    name = ""

    async def start(self, gateway: Any) -> None:
        pass

    async def stop(self) -> None:
        pass
