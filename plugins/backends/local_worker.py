"""Local model runtimes in model workers, reached through the openai_compatible relay.

:class:`LocalWorkerBackend` is the gateway's side of a local runtime (llamacpp, mlc):
its native code runs in worker processes (``plugins.backends.worker_server``) that
``sdk.workers`` starts and supervises, once per machine, shared by all
``serve --workers`` processes. The gateway relays to them exactly as to any
OpenAI-compatible upstream (one relay path), so every relay feature (backpressure,
cancellation on disconnect, usage folding, retries across replicas before the first
token) applies to local models too.

What is particular to a worker:
- a request for a model whose worker is not up gets 503 ``model_restarting`` with
  ``Retry-After`` at once; a stream its worker dies under ends with that error (SSE
  ``error`` event, WebSocket ``error`` message), and its usage is recorded;
- ``health()`` asks the worker itself: its state, ``capacity`` (sequences it runs at
  once), and what it is doing; ``capacity`` is also the ``ayct_model_capacity`` gauge;
- the worker's own refusals (status, message, param, code) reach the client as they are.

A subclass names its engine (``engine = "module:Class"``, run inside the worker) and
may check requests before admission (``check``).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

from gateway import sdk
from gateway.sdk import APIError
from plugins.backends.openai_compatible import OpenAICompatibleBackend, Replica

log = logging.getLogger("allyoucantoken.backend.worker")


class LocalWorkerBackend(OpenAICompatibleBackend):
    """A model served by supervised local worker processes (see the module)."""

    engine = ""                 # "module:Class" of the engine the worker runs
    unknown_params = "refuse"   # the engine names what it cannot do
    max_n = 1

    @classmethod
    def worker_specs(cls, model_cfg, config) -> list[sdk.workers.WorkerSpec]:
        """The workers of one model: one by default (subclasses: one per GPU)."""
        return [cls._spec(model_cfg, model_cfg.name, {})]

    @classmethod
    def _spec(cls, model_cfg, name: str, env: dict) -> sdk.workers.WorkerSpec:
        argv = sdk.workers.python_module(
            "plugins.backends.worker_server", "--engine", cls.engine, "--model",
            model_cfg.name, "--options", json.dumps(dict(model_cfg.options or {})))
        return sdk.workers.WorkerSpec(name, argv, env)

    def __init__(self, model_cfg, config) -> None:
        self.model_cfg, self.config = model_cfg, config
        self._configure(model_cfg.name, OpenAICompatibleBackend.Options(
            base_url="http://127.0.0.1:1/v1", read_timeout=600.0, health_interval=1.0,
            health_timeout=2.0, embeddings=True))
        self.capabilities = ["chat", "completions"]
        self.workers: list[sdk.workers.ModelWorker] = []
        self.last_health: dict = {}

    async def start(self) -> None:
        """Use the workers the parent started, else start them now; then relay to them."""
        workers = sdk.workers.workers_for(self.name)
        if workers is None:
            specs = self.worker_specs(self.model_cfg, self.config)
            workers = await asyncio.to_thread(sdk.workers.start_workers, self.name, specs)
        self.workers = workers
        self.replicas = [Replica(w.url) for w in workers]
        self.max_attempts = len(self.replicas)
        self.api_key = workers[0].token
        await super().start()
        await self.health()

    async def close(self) -> None:
        await super().close()
        # only if this process started them; off the loop (it waits for the processes)
        await asyncio.to_thread(sdk.workers.stop_workers, self.name)

    def reported_capacity(self) -> int:
        """Sequences each worker runs at once, as it reported at start (0: unknown)."""
        return int(self.last_health.get("capacity", 0) or 0)

    def _up(self) -> bool:
        return any(w.state == sdk.workers.UP for w in self.workers)

    async def health(self) -> dict:
        """The worker's own report (live): state, capacity, busy and waiting requests."""
        states = [sdk.workers.STATE_NAMES[w.state] for w in self.workers]
        report = {"ok": False, "state": "up" if "up" in states else states[0],
                  "workers": len(self.workers),
                  "restarts": sum(w.restarts for w in self.workers)}
        if self._up():
            try:
                async with asyncio.timeout(self.health_timeout):
                    conn = await self.replicas[0].health_pool.request("GET", "/health")
                    raw = await conn.read_all(1 << 16)
                conn.release()
                worker = json.loads(raw)
                self.last_health = worker
                report.update({k: v for k, v in worker.items() if k != "ok"})
                report["ok"] = bool(worker.get("ok"))
                report["capacity"] = int(worker.get("capacity", 1)) * len(self.workers)
                sdk.metrics.MODEL_CAPACITY.labels(self.name).set(report["capacity"])
            except (OSError, TimeoutError, ValueError):
                pass
        return report

    async def _check(self, replica: Replica) -> None:
        if not self._up():
            self._set_health(replica, False)
            return
        await super()._check(replica)

    def _payload(self, req) -> dict:
        body = super()._payload(req)
        body["request_id"] = req.request_id    # the engine's id for it (MLC's abort)
        return body

    def _stream(self, req, path: str, kind: str):
        if not self._up():
            raise self._restarting()
        return super()._stream(req, path, kind)

    async def embeddings(self, req):
        """Relayed as to any upstream, with the caller's account (``req.account``, when
        the handler set it) in the body: the worker's engine serves the batches of
        different accounts in turn. Cancelling it closes the connection to the worker,
        which stops between batches."""
        if not self._up():
            raise self._restarting()
        account = getattr(req, "account", "")
        if account:
            req = dataclasses.replace(req, body={**req.body, "account": account})
        return await super().embeddings(req)

    def _restarting(self) -> APIError:
        return APIError(503, f"The model `{self.name}` is restarting after a failure of its "
                             "worker; try again in a few seconds.", code="model_restarting",
                        headers={"Retry-After": "2"})

    def _closed_early(self) -> APIError:
        return self._restarting()

    def _unavailable(self) -> APIError:
        return self._restarting()

    async def _upstream_error(self, resp) -> APIError:
        """The worker's refusal as it is (its body is the engine's own APIError)."""
        try:
            err = json.loads(await resp.read_all(1 << 20))["error"]
            return APIError(resp.status, str(err["message"]), param=err.get("param"),
                            code=err.get("code"), headers={"Retry-After": "1"}
                            if resp.status in (429, 503) else None)
        except (KeyError, TypeError, ValueError, OSError):
            return APIError(502, f"The model worker failed (status {resp.status}).",
                            code="backend_error")
        finally:
            resp.release()
