"""An in-process gateway for handler-level tests (in the spirit of pytest_jupyter's
``jp_fetch``): no Python start-up, no ``keys create`` subprocess, the same code.

``start_inprocess(tmp, db_uri, sections)`` writes the config exactly as
``tests.helpers.start_gateway`` does, loads it with ``gateway.config.load`` and runs
``gateway.app.serve`` (the code behind ``allyoucantoken serve``: real store on the given
MongoDB-wire server, plugins through the same plugin manager, the same Tornado
application, HTTP server and request guard, drain and shutdown) on its own event loop in
a thread of the test process, listening on a real loopback port. Tests talk HTTP (and
WebSocket) to ``gw.url`` as to a process, or call ``gw.fetch(path, method=..., body=...,
headers=...)``.

What differs from a process: ``serve`` waits for SIGTERM through
``loop.add_signal_handler``; the loop here records that handler and ``stop()`` calls it
(no real signal), so the shutdown path is the real one. Process-wide state is shared by
the in-process gateways of one test run: the Prometheus registry (``/metrics``), the
drain's in-flight set and the open WebSockets, and the logging configuration. So keep
``tests.helpers.start_gateway`` (a real process) for tests about processes: several
processes sharing limits, SIGKILL, SIGTERM and drain, ``--workers``, the embedded
database child, the process log, metric totals and the database commands one process
sends.
"""
from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import signal
import threading
import warnings
from pathlib import Path

import httpx

from tests.helpers import (GatewaySetup, create_key, env, gateway_setup, read_usage_events,
                           run_cli)


class _TestLoop(asyncio.SelectorEventLoop):
    """An event loop for a thread that is not the main one: signal handlers are recorded
    (``serve`` installs them for SIGTERM/SIGINT) so that ``stop()`` can run them."""

    def __init__(self) -> None:
        super().__init__()
        self.signal_handlers: dict[int, tuple] = {}

    def add_signal_handler(self, sig, callback, *args) -> None:
        self.signal_handlers[sig] = (callback, args)

    def remove_signal_handler(self, sig) -> bool:
        return self.signal_handlers.pop(sig, None) is not None


class InProcessGateway:
    """A real gateway (``gateway.app.serve``) running in a thread of the test process."""

    def __init__(self, setup: GatewaySetup) -> None:
        self.setup = setup
        self.url = setup.url
        self.config_path = setup.config_path
        self.db_uri = setup.db_uri
        self.db_name = setup.db_name
        self.data_dir = setup.data_dir
        self.gateway = None        # gateway.runtime.Gateway, once started
        self.server = None         # its tornado HTTPServer
        self.loop: _TestLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "InProcessGateway":
        from gateway import config as config_mod
        from gateway.app import serve

        # The environment as the process gets it (tests.helpers.env).
        config = config_mod.load(str(self.config_path), env())
        self.config = config

        def ready(gateway, server) -> None:
            self.gateway, self.server = gateway, server
            self._ready.set()

        def run() -> None:
            try:
                with asyncio.Runner(loop_factory=self._new_loop) as runner:
                    runner.run(serve(config, ready=ready))
            except BaseException as exc:
                self._error = exc
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=run, name=f"gateway-{self.setup.port}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the in-process gateway did not start within {timeout}s")
        if self._error is not None or self.gateway is None:
            raise self._error or RuntimeError("the in-process gateway stopped at start")
        return self

    def _new_loop(self) -> _TestLoop:
        self.loop = _TestLoop()
        return self.loop

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Deliver ``sig`` as ``serve`` would receive it (SIGTERM: drain and stop)."""
        callback, args = self.loop.signal_handlers[sig]
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: the real drain and shutdown of ``serve``; wait until it has returned."""
        if self._thread is None or not self._thread.is_alive():
            return
        self.signal(signal.SIGTERM)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the in-process gateway did not stop within {timeout}s")
        if self._error is not None:   # a process would have exited with an error code
            warnings.warn(f"the in-process gateway on port {self.setup.port} stopped with "
                          f"{self._error!r}", RuntimeWarning, stacklevel=2)

    # -- helpers ------------------------------------------------------------------------
    def run(self, fn, timeout: float = 60.0):
        """Run ``await fn(gateway)`` on the gateway's event loop (its store, backends and
        limiters live there) and return the result."""
        async def call():
            return await fn(self.gateway)
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def fetch(self, path: str, method: str = "GET", body=None, headers: dict | None = None,
              timeout: float = 60.0, **kw) -> httpx.Response:
        """One HTTP request to this gateway (``body``: a dict or list is sent as JSON, a
        str or bytes as is; no Content-Type is added). Returns the ``httpx.Response`` whatever
        its status."""
        if isinstance(body, (dict, list)):
            kw["content"] = jsonlib.dumps(body)
        elif body is not None:
            kw["content"] = body
        return httpx.request(method, self.url + path, headers=headers, timeout=timeout, **kw)

    def create_key(self, account: str | None = None, tier: str | None = None,
                   name: str = "") -> str:
        """A new API key, and its account if needed (as ``allyoucantoken keys create``
        does), through the gateway's own store."""
        return self.run(lambda gateway: create_key(
            gateway.store, account, tier or gateway.config.limits.default_tier, name))

    def usage_events(self) -> list[dict]:
        """The per-request usage log (the opt-in ``events_file`` observer, on in tests)."""
        return read_usage_events(self.data_dir)

    def cli(self, *args: str, check: bool = True):
        """``allyoucantoken -c <this config> ...`` as a process (keys, admin commands)."""
        return run_cli(self.config_path, *args, check=check)


def start_inprocess(tmp: Path, db_uri: str, sections: dict | None = None,
                    db_name: str | None = None, timeout: float = 60.0) -> InProcessGateway:
    """Write the config (``tests.helpers.gateway_setup``) and start ``serve`` in-process."""
    return InProcessGateway(gateway_setup(tmp, db_uri, sections, db_name)).start(timeout)


@contextlib.contextmanager
def keyed_inprocess(tmp_path_factory, db_uri: str, sections: dict, name: str):
    """An in-process gateway with one API key (``gw.key``, account ``NAME@example.com``),
    stopped on exit: the body of a module-scoped fixture."""
    gw = start_inprocess(tmp_path_factory.mktemp(name), db_uri, sections)
    try:
        gw.key = gw.create_key(f"{name}@example.com")
        yield gw
    finally:
        gw.stop()

