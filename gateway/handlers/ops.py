"""Operational endpoints: /healthz (liveness + database) and /metrics (Prometheus)."""
from __future__ import annotations

import asyncio
import hmac

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.errors import APIError
from gateway.handlers.base import BaseAPIHandler


class HealthHandler(BaseAPIHandler):
    """GET /healthz: 200 when the database answers, 503 otherwise; backends listed."""

    async def get(self) -> None:
        db_ok = await self.gateway.store.ping()
        names = list(self.gateway.backends)
        healths = await asyncio.gather(*(self.gateway.backends[n].health() for n in names))
        self.write_json({"ok": db_ok, "database": db_ok,
                         "models": {n: bool(h.get("ok")) for n, h in zip(names, healths)},
                         "backends": dict(zip(names, healths))},
                        200 if db_ok else 503)


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


ROUTES = [(r"/healthz", HealthHandler), (r"/metrics", MetricsHandler)]
