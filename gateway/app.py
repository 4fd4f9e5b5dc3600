"""Build the Tornado application and run the gateway process."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl

import tornado.httpserver
import tornado.web

from gateway import datadir

from gateway.http import accesslog

from gateway.http import drain

from gateway.store import embedded_db

from gateway.http import guard as httpguard

from gateway.http import lean as leanhttp

from gateway.http import requestid
from gateway import model_workers
from gateway.children import die_with_parent
from gateway.config import Config
from gateway.handlers import embeddings, messages, ops, openai, responses, ws
from gateway.handlers.base import NotFoundHandler
from gateway.plugin_manager import get_plugin_manager
from gateway.runtime import Gateway
from gateway.store import Store

log = logging.getLogger("allyoucantoken")

CORE_ROUTES = [*openai.ROUTES, *responses.ROUTES, *messages.ROUTES, *embeddings.ROUTES,
               *ws.ROUTES, *ops.ROUTES]


class _PerRequest(requestid.RequestIdTransform):
    """Every response gets its ``x-request-id``; a request counts as in flight (for the
    drain) from its start until its access log line."""

    def __init__(self, request) -> None:
        super().__init__(request)
        drain.IN_FLIGHT.add(request)


class GatewayApplication(tornado.web.Application):
    """Once the drain stops waiting, new API requests get 503 ``server_shutdown``."""

    def __init__(self, gateway: Gateway, routes, **settings) -> None:
        self.gateway = gateway
        super().__init__(routes, **settings)

    def find_handler(self, request, **kwargs):
        if drain.refusing(self.gateway) and request.path.startswith("/v1/"):
            return self.get_handler_delegate(request, ops.DrainingHandler,
                                             {"gateway": self.gateway})
        return super().find_handler(request, **kwargs)


def make_app(gateway: Gateway) -> tornado.web.Application:
    """The Tornado application: core API routes plus routes registered by plugins."""
    kwargs = {"gateway": gateway}
    routes = [(pattern, handler, kwargs) for pattern, handler in CORE_ROUTES]
    routes += [(pattern, handler, {**kwargs, **extra}) for pattern, handler, extra in gateway.routes]
    routes.append((r"/v1/.*", NotFoundHandler, kwargs))
    return GatewayApplication(gateway, routes, compress_response=False, autoreload=False,
                              log_function=accesslog.log_request, transforms=[_PerRequest])


def embedded_port_file(config: Config) -> str:
    return os.path.join(config.server.data_dir, "embedded-db.port")


def database_uri(config: Config) -> tuple[str, embedded_db.EmbeddedDB | None]:
    """The configured MongoDB URI, or a newly started embedded server's."""
    datadir.check(config)   # an unwritable data_dir: one line, no traceback
    if config.database.uri:
        return config.database.uri, None
    os.makedirs(config.server.data_dir, mode=0o700, exist_ok=True)
    os.chmod(config.server.data_dir, 0o700)
    path = os.path.join(config.server.data_dir, "db.sqlite")
    db = embedded_db.start(config.database.embedded_engine, path,
                           auth_file=os.path.join(config.server.data_dir, embedded_db.AUTH_FILE))
    return db.uri, db


def ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.server.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    return ctx


async def serve(config: Config, ready=None, worker: int | None = None,
                workers: int = 1) -> None:
    """Run the gateway until SIGTERM/SIGINT; then drain, flush usage and stop cleanly.
    As worker ``worker`` of ``serve --workers``, listen with SO_REUSEPORT (the kernel
    spreads connections over the workers) and use the parent's database."""
    uri, embedded = database_uri(config)
    port_file = embedded_port_file(config)
    if embedded:
        os.makedirs(config.server.data_dir, exist_ok=True)
        with open(port_file, "w") as fh:
            fh.write(str(embedded.port))
        log.info("embedded database on port %d (%s)", embedded.port,
                 config.database.embedded_engine)
    store = Store(uri, config.database.name, config.database.timeout)
    try:
        await store.init()
        pm = get_plugin_manager(config.plugins.modules, config.plugins.disabled)
        gateway = Gateway(config, pm, store, worker, workers)
        await gateway.start()
        app = make_app(gateway)
        server = tornado.httpserver.HTTPServer(
            httpguard.RequestGuard(app, config.server.max_body_bytes,
                                   config.server.max_header_bytes,
                                   lean=leanhttp.LeanRouter(gateway, {**openai.LEAN_ROUTES,
                                                                   **responses.LEAN_ROUTES,
                                                                   **messages.LEAN_ROUTES})),
            ssl_options=ssl_context(config), xheaders=False,
            idle_connection_timeout=config.server.header_timeout,
            body_timeout=config.server.body_timeout,
            **httpguard.server_options(config.server.max_body_bytes,
                                       config.server.max_header_bytes))
        server.listen(config.server.port, config.server.host, reuse_port=worker is not None)
        scheme = "https" if config.server.tls_cert else "http"
        log.info("listening on %s://%s:%d (models: %s)%s", scheme, config.server.host,
                 config.server.port, ", ".join(gateway.backends),
                 f" worker {worker} pid {os.getpid()}" if worker is not None else "")
        stop, hurry = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready:
            ready(gateway, server)
        await stop.wait()
        for sig in (signal.SIGTERM, signal.SIGINT):   # a second signal: stop draining
            loop.add_signal_handler(sig, hurry.set)
        log.info("shutting down: draining for up to %gs", config.server.drain_timeout)
        await drain.drain(server, gateway, config.server.drain_timeout, hurry)
        await gateway.cancel_running()
        await gateway.stop()
    finally:
        try:
            await asyncio.wait_for(store.close(), 1.0)
        except (TimeoutError, Exception):  # noqa: BLE001 - exiting anyway
            pass
        if embedded:
            embedded.stop(timeout=embedded_db.EXIT_GRACE + 1)
            if os.path.exists(port_file):
                os.remove(port_file)


def serve_workers(config: Config, workers: int) -> int:
    """``serve --workers N``: N gateway processes on one port (SO_REUSEPORT). The parent
    starts the embedded database once (unless ``[database] uri`` is set), forks the
    workers, restarts one that dies, and on SIGTERM/SIGINT asks each to drain (SIGTERM),
    waits for them, then stops the database. Each worker has its own usage spool."""
    uri, embedded = database_uri(config)
    port_file = embedded_port_file(config)
    if embedded:
        with open(port_file, "w") as fh:
            fh.write(str(embedded.port))
        config.database.uri = uri   # the workers connect to this one server
        log.info("embedded database on port %d for %d workers", embedded.port, workers)
    # Model workers (local runtimes) once for all the gateway processes, before the fork.
    pm = get_plugin_manager(config.plugins.modules, config.plugins.disabled)
    backend_types: dict = {}
    pm.hook.register_backends(register=backend_types.__setitem__, config=config)
    try:
        model_workers.start_for_config(config, backend_types)
    except model_workers.WorkerStartError:
        if embedded:
            embedded.stop(timeout=embedded_db.EXIT_GRACE + 1)
        raise
    children: dict[int, int] = {}   # pid -> worker index
    stopping = False
    parent = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:   # the worker: its own process group, so a terminal's ^C reaches
            code = 0   # only the parent, which forwards one SIGTERM
            try:
                os.setpgid(0, 0)
                # Die with the parent, even when it is SIGKILLed: a worker left behind
                # keeps the port with no database and answers 503.
                die_with_parent()
                if os.getppid() != parent:
                    os._exit(1)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                asyncio.run(serve(config, worker=index, workers=workers))
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index

    def stop(signum, frame) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            for pid in list(children):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for index in range(workers):
            spawn(index)
        while children:
            pid, status = os.wait()
            index = children.pop(pid, None)
            if index is None:
                continue
            if not stopping:
                log.error("worker %d (pid %d) exited (%s); starting it again", index, pid,
                          os.waitstatus_to_exitcode(status))
                import time
                time.sleep(1.0)
                if not stopping:
                    spawn(index)
    finally:
        model_workers.stop_workers()
        if embedded:
            embedded.stop(timeout=embedded_db.EXIT_GRACE + 1)
            if os.path.exists(port_file):
                os.remove(port_file)
    return 0
