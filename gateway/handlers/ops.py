"""Operational endpoints: /livez, /readyz (and /healthz, its alias), /metrics.

- ``/livez``: the process is up and its event loop answers. Never touches the database
  or a backend, so an orchestrator does not restart gateways during a database outage.
- ``/readyz``: this gateway should get traffic: the database answers, usage reaches
  it (a database that answers but cannot write, e.g. a full disk, is not ready: usage is
  then held in memory only, see ``usage`` in the JSON), at least one model backend is
  healthy and it is not draining. 200, else 503 with the same JSON.
- ``/healthz``: kept for compatibility as an alias of ``/readyz``: it always answered
  503 when the database was down (readiness behaviour), and load balancers use it to
  take a gateway out of rotation; its JSON (``ok``, ``database``, ``models``,
  ``backends``) is a subset of ``/readyz``'s.
"""
from __future__ import annotations

import asyncio
import hmac

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.http import drain
from gateway.errors import APIError
from gateway.handlers.base import BaseAPIHandler
from gateway.relay.pipeline import record_refusal

CHECK_TIMEOUT = 2.0   # seconds a readiness check waits for the database or a backend


class LiveHandler(BaseAPIHandler):
    """GET /livez: 200 while the process runs (also while draining)."""

    def get(self) -> None:
        self.write_json({"status": "ok", "draining": self.gateway.draining})


class ReadyHandler(BaseAPIHandler):
    """GET /readyz (and /healthz): 200 when the database answers, usage is being written,
    a backend is healthy and the gateway is not draining; 503 otherwise, naming what is
    wrong."""

    async def get(self) -> None:
        names = list(self.gateway.backends)
        db_ok, *healths = await asyncio.gather(
            self._check(self.gateway.store.ping()),
            *(self._check(self.gateway.backends[n].health()) for n in names))
        healths = [h if isinstance(h, dict) else {"ok": False} for h in healths]
        models = {n: bool(h.get("ok")) for n, h in zip(names, healths)}
        draining = self.gateway.draining
        usage = self.gateway.usage.status()
        problems = [text for bad, text in (
            (db_ok is not True, "the database does not answer"),
            (not usage["persisting"], "usage is not being written to the database "
                                      f"({usage.get('error')}); "
                                      f"{usage['unwritten_requests']} request(s) held in "
                                      "memory"),
            (not any(models.values()), "no model backend is healthy"),
            (draining, "the gateway is shutting down")) if bad]
        body = {"ok": not problems, "ready": not problems, "database": db_ok is True,
                "usage": usage, "draining": draining, "models": models,
                "backends": dict(zip(names, healths))}
        if problems:
            body.update(APIError(503, "Not ready: " + "; ".join(problems) + ".",
                                 code="not_ready").body())
        self.write_json(body, 503 if problems else 200)

    @staticmethod
    async def _check(coro):
        try:
            return await asyncio.wait_for(coro, CHECK_TIMEOUT)
        except Exception:  # noqa: BLE001 - a failing check reports, never raises
            return False


class DrainingHandler(BaseAPIHandler):
    """Every API request that arrives while the gateway drains: 503, retry elsewhere
    (counted in the usage rollups when its key is known: a cached key answers at once,
    and the drain never waits long for a lookup)."""

    KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completion",
             "/v1/embeddings": "embedding"}

    async def prepare(self) -> None:
        err = drain.shutdown_error()
        try:
            principal = await asyncio.wait_for(self.gateway.authenticate(self.request), 0.5)
        except Exception:  # noqa: BLE001 - no key, a bad one, or no quick answer
            principal = None
        record_refusal(self.gateway, principal, err, self.KINDS.get(self.request.path), "http")
        raise err


class MetricsHandler(BaseAPIHandler):
    """GET /metrics: Prometheus text format. Not public by default: it answers a
    direct loopback client (no proxy forwarding headers), or any client presenting
    ``Authorization: Bearer <server.metrics_token>``, or everyone when
    ``server.metrics_public`` is true. Everyone else gets a JSON 404."""

    PROXY_HEADERS = ("X-Forwarded-For", "X-Real-Ip", "Forwarded")

    def allowed(self) -> bool:
        server = self.gateway.config.server
        if server.metrics_public:
            return True
        token = getattr(server, "metrics_token", "")
        if token:
            presented = self.request.headers.get("Authorization", "").encode()
            if hmac.compare_digest(presented, f"Bearer {token}".encode()):
                return True
        proxied = any(h in self.request.headers for h in self.PROXY_HEADERS)
        return not proxied and self.request.remote_ip in ("127.0.0.1", "::1")

    def get(self) -> None:
        if not self.allowed():
            return self.send_api_error(APIError(404, "Not found.", code="unknown_url"))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())


ROUTES = [(r"/livez", LiveHandler), (r"/readyz", ReadyHandler), (r"/healthz", ReadyHandler),
          (r"/metrics", MetricsHandler)]
