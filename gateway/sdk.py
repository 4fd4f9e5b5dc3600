"""The plugin SDK: base classes with sensible defaults, typed options, and the names a
plugin needs, in one import (``from gateway import sdk``).

The base classes are a convenience, not a requirement: the gateway still accepts any
object with the methods ``gateway/hookspecs.py`` describes (duck typing), so plugins
written before the SDK keep working unchanged.

- :class:`Backend`: ``start``/``close`` do nothing, ``health()`` is ``{"ok": True}``,
  ``completions`` is derived from ``chat`` (the prompt becomes one user message), and
  ``self.options`` is the model's ``options`` table validated against the nested
  ``Options`` dataclass.
- :class:`Limiter`: ``settle``/``close`` do nothing (for limiters that reserve
  nothing); :meth:`Limiter.allow` and :meth:`Limiter.deny` build ``Admission`` objects.
- :class:`Authenticator`: ``authenticate`` returns ``None`` (no opinion).
- :class:`Service`: ``start``/``stop`` do nothing.
- :class:`Options`: subclass it and annotate fields; the subclass becomes a dataclass,
  validated like the config file (unknown keys and wrong types are a
  :class:`ConfigError` naming the key).
"""
from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator

from gateway.chunks import choice_text, parse_event, usage_of
from gateway.config import ConfigError, build_section
from gateway.errors import APIError
from gateway.hookspecs import hookimpl
from gateway.types import Admission, Chunk, GenerationRequest, Principal, Usage

__all__ = ["Admission", "APIError", "Authenticator", "Backend", "Chunk", "ConfigError",
           "GenerationRequest", "Limiter", "Options", "Principal", "Service", "Usage",
           "build_options", "choice_text", "deny", "hookimpl", "parse_event",
           "section_options", "usage_of"]


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
