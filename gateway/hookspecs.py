"""Every hook of AllYouCanToken, in one module.

Hook implementations are synchronous (pluggy). A hook that needs I/O registers an
object whose methods are async: a backend factory, a limiter, an authenticator.

Plugins take everything they need of the core from ``gateway.sdk``: ``sdk.hookimpl``,
the types named below (``sdk.Chunk``, ``sdk.APIError``...), base classes with defaults
(``sdk.Backend``, ``sdk.Limiter``, ``sdk.Authenticator``, ``sdk.Service``) and
``Protocol`` classes typing the objects these hooks register (``sdk.BackendProtocol``,
``sdk.LimiterProtocol``, ``sdk.AuthenticatorProtocol``, ``sdk.ServiceProtocol``).
"""
from __future__ import annotations

import pluggy

PROJECT = "allyoucantoken"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backends(register, config):
    """Register backend types: call ``register(name, factory)``.

    ``factory(model_config, config)`` returns a backend serving one configured model
    (``[[models]] backend = name``). A backend has ``name``, and async methods
    ``start()``, ``chat(request)`` and ``completions(request)`` (async iterators of
    ``sdk.Chunk``), ``health()`` (dict with ``ok``) and ``close()``.
    Closing the iterator early must cancel the generation at once.

    A Chunk is about one choice. Plain-text backends yield ``Chunk(text)``, then
    ``Chunk(finish_reason=...)`` and ``Chunk(usage=Usage(prompt, completion))``.
    Backends with more of the OpenAI chunk set ``index`` (choice, for ``n > 1``),
    ``delta`` (chat: the delta dict as OpenAI sends it, with ``tool_calls`` deltas,
    ``reasoning_content``, ``refusal``), ``logprobs`` and ``extra`` (top-level fields
    such as ``system_fingerprint``); a proxy may also set ``raw`` (the upstream chunk's
    JSON bytes) to have them relayed with only ``id``/``model`` rewritten. See
    ``Chunk``'s docstring for the exact shape.

    Optional: ``capabilities`` (list, e.g. ``["chat", "completions", "embeddings"]``),
    ``async embeddings(request) -> (vectors, Usage | None)`` for ``/v1/embeddings``, and
    ``check(body)`` raising a 400 ``APIError`` before admission for what it cannot do.
    """


@hookspec
def register_limiters(register, config, store):
    """Register limiters: call ``register(limiter)``.

    A limiter has ``name``, ``async admit(principal, request) -> Admission`` (reserve
    before the backend runs; deny with status/limit/retry_after) and
    ``async settle(admission, usage, outcome)`` (reconcile with real usage and release,
    on success, error, disconnect or timeout). All limiters must admit; when one denies,
    the reservations of the others are settled with zero usage. An optional
    ``async close()`` runs at shutdown (e.g. to give back leased quota). Keep the
    database off this path: ``admit`` and ``settle`` run for every request.
    """


@hookspec
def register_authenticators(register, config, store):
    """Register authenticators: call ``register(authenticator)``.

    An authenticator has ``name`` and ``async authenticate(request) -> Principal | None``,
    where ``request`` is the Tornado ``HTTPServerRequest``. It may raise
    ``sdk.APIError`` (e.g. 401 for a revoked key). The first principal wins.
    """


@hookspec
def register_routes(register, config):
    """Register extra Tornado routes: call ``register(pattern, handler_class, kwargs)``.

    Handlers receive ``gateway`` (the running ``Gateway``) in their kwargs as well.
    """


@hookspec
def register_services(register, config, store):
    """Register background services: call ``register(service)``.

    A service has ``name``, ``async start(gateway)`` and ``async stop()``; it runs for
    the life of the gateway process (e.g. an email sender, a retention job).
    """


@hookspec
def config_sections():
    """Return the names of the config-file sections this plugin reads (e.g. ``["smtp"]``).

    The gateway refuses to start when the config file has a section that no plugin
    claims, so a misspelt section is an error instead of being silently ignored.
    """


@hookspec
def on_usage(event):
    """Observe one usage event (a dict of metadata, never content) after a request ends.

    Called on the event loop for every request: do no blocking I/O here (buffer, as the
    built-in ``plugins.usage.events_file`` does). The database keeps only rollups; an
    observer is the way to keep per-request records.
    """


@hookspec
def register_commands(subparsers):
    """Add subcommands to the ``allyoucantoken`` command line (llm's ``register_commands``).

    ``subparsers`` is the ``argparse`` subparsers object of the top-level parser: call
    ``subparsers.add_parser(name, help=...)``, add arguments, and set the function to
    run with ``set_defaults(func=fn)``. ``fn(args, config)`` receives the parsed
    arguments and the loaded ``Config``; it may be a coroutine function (it is run with
    ``asyncio.run``). Plugins are loaded for this only when the command line does not
    name a built-in command, so built-in commands start as fast as before.
    """
