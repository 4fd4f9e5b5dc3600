"""The running gateway: configured models with their backends, limiters, authenticators,
services and the usage recorder, all gathered from the plugin hooks."""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from gateway.config import Config, ConfigError
from gateway.errors import APIError
from gateway.relay.dispatch import Dispatcher
from gateway.relay.tier_policy import TierPolicy
from gateway.types import Principal
from gateway.relay.usage_recorder import UsageRecorder

log = logging.getLogger("allyoucantoken")


def spool_path(data_dir: str, worker: int | None, workers: int = 1) -> str:
    """This process's usage spool: ``usage-spool.jsonl``, or ``usage-spool-<worker>.jsonl``
    for a ``serve --workers`` process. Worker 0 (or the single process) first adopts the
    spools no running process owns (left by an earlier run with another worker count):
    their batches are appended to its own spool, which it replays at start. Batches carry
    ids, so a batch replayed twice is still counted once."""
    own = os.path.join(data_dir, "usage-spool.jsonl" if worker is None
                       else f"usage-spool-{worker}.jsonl")
    if worker not in (None, 0):
        return own
    live = {os.path.basename(own)} | {f"usage-spool-{w}.jsonl" for w in range(workers)
                                      if worker is not None}
    try:
        names = sorted(os.listdir(data_dir))
    except FileNotFoundError:
        return own
    for name in names:
        if name.startswith("usage-spool") and name.endswith(".jsonl.reserve") and \
                name.removesuffix(".reserve") not in live:
            try:                   # room set aside by a worker of an earlier run
                os.remove(os.path.join(data_dir, name))
            except OSError:
                pass
            continue
        if not (name.startswith("usage-spool") and name.endswith(".jsonl")) or name in live:
            continue
        path = os.path.join(data_dir, name)
        with open(path, "rb") as src:
            data = src.read()
        if data and not data.endswith(b"\n"):
            data += b"\n"
        with open(own, "ab") as dst:
            dst.write(data)
            dst.flush()
            os.fsync(dst.fileno())
        os.remove(path)
        log.info("adopted the usage spool %s", name)
    return own


class Gateway:
    """Everything a handler needs, built once per process from config and plugins."""

    def __init__(self, config: Config, pm, store, worker: int | None = None,
                 workers: int = 1) -> None:
        self.config = config
        self.pm = pm
        self.store = store
        self.tier_policy = TierPolicy.from_config(config)   # the tier limiter's rules too
        self.dispatcher = Dispatcher(config)      # fair queues for models with a capacity
        self.backend_types: dict[str, Any] = {}
        self.backends: dict[str, Any] = {}       # model name -> backend instance
        self.limiters: list[Any] = []
        self.authenticators: list[Any] = []
        self.services: list[Any] = []
        self.routes: list[tuple] = []
        self.running: set[asyncio.Task] = set()   # generations in progress (for shutdown)
        self.draining = False                     # SIGTERM: finishing, taking no new work
        self.worker = worker
        self.usage = UsageRecorder(store, config.usage.flush_interval,
                                   spool_path(config.server.data_dir, worker, workers),
                                   config.usage.hourly_days, config.usage.shutdown_timeout,
                                   observers=pm.hook.on_usage)

        claimed = {name for names in pm.hook.config_sections() for name in names}
        unknown = sorted(set(config.extra) - claimed)
        if unknown:
            raise ConfigError(f"unknown config section(s) {', '.join(f'[{n}]' for n in unknown)}"
                              f"; known: {', '.join(f'[{n}]' for n in sorted(claimed))} and "
                              "the core sections")

        def reg_backend(name: str, factory) -> None:
            self.backend_types[name] = factory

        pm.hook.register_backends(register=reg_backend, config=config)
        pm.hook.register_limiters(register=self.limiters.append, config=config, store=store)
        pm.hook.register_authenticators(register=self.authenticators.append, config=config,
                                        store=store)
        pm.hook.register_services(register=self.services.append, config=config, store=store)
        pm.hook.register_routes(register=lambda pattern, handler, kwargs=None:
                                self.routes.append((pattern, handler, kwargs or {})),
                                config=config)
        for model in config.models:
            factory = self.backend_types.get(model.backend)
            if factory is None:
                known = ", ".join(sorted(self.backend_types)) or "none"
                raise ValueError(f"model {model.name!r}: unknown backend {model.backend!r} "
                                 f"(registered: {known})")
            self.backends[model.name] = factory(model, config)

    async def start(self) -> None:
        """Start backends, the usage writer and background services."""
        await asyncio.gather(*(b.start() for b in self.backends.values()))
        self.dispatcher.build(self.backends, self.store)
        await self.dispatcher.start_sharing()
        await self.usage.start()
        for service in self.services:
            await service.start(self)

    async def cancel_running(self) -> None:
        """Cut off the generations still running and wait until each has settled its
        limits and recorded its usage (status 499)."""
        tasks = list(self.running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self, budget: float = 3.0) -> None:
        """Stop services, give back limiter leases, write usage, close backends (in that
        order). Services and limiters share ``budget`` seconds and usage has its own
        ``shutdown_timeout``, so a slow or unreachable database cannot hold the process:
        usage that cannot be written goes to the spool file."""
        deadline = asyncio.get_running_loop().time() + budget
        await self.dispatcher.stop()
        for part in [*reversed(self.services), *self.limiters]:
            stop = getattr(part, "stop", None) or getattr(part, "close", None)
            if stop is None:
                continue
            try:
                async with asyncio.timeout_at(max(deadline, asyncio.get_running_loop().time()
                                                  + 0.2)):
                    await stop()
            except Exception as exc:  # noqa: BLE001 - shutdown goes on
                log.warning("%s did not stop cleanly (%s)", getattr(part, "name", part),
                            type(exc).__name__)
        await self.usage.stop()
        try:
            async with asyncio.timeout(2.0):
                await asyncio.gather(*(b.close() for b in self.backends.values()),
                                     return_exceptions=True)
        except TimeoutError:
            log.warning("backends did not close within 2 s")

    async def authenticate(self, request) -> Principal | None:
        """Ask each authenticator in turn; the first principal wins."""
        for auth in self.authenticators:
            principal = await auth.authenticate(request)
            if principal is not None:
                return principal
        return None

    def backend_for(self, model: str):
        backend = self.backends.get(model)
        if backend is None:
            raise APIError(404, f"The model `{model}` does not exist or you do not have "
                                "access to it.", param="model", code="model_not_found")
        return backend

    def models_for(self, principal: Principal | None) -> list[str]:
        """The model names this caller may use (all, unless its tier or its key's model
        list restricts them): ``TierPolicy``, the rules the tier limiter admits by."""
        return self.tier_policy.models_for(principal, [m.name for m in self.config.models])
