"""Operational endpoints: /healthz (liveness + database) and /metrics (Prometheus)."""
from __future__ import annotations

import asyncio

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
                         "models": {n: bool(h.get("ok")) for n, h in zip(names, healths)}},
                        200 if db_ok else 503)


class MetricsHandler(BaseAPIHandler):
    """GET /metrics: Prometheus text format; loopback only unless server.metrics_public."""

    def get(self) -> None:
        if not self.gateway.config.server.metrics_public and \
                self.request.remote_ip not in ("127.0.0.1", "::1"):
            return self.send_api_error(APIError(404, "Not found.", code="unknown_url"))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())


ROUTES = [(r"/healthz", HealthHandler), (r"/metrics", MetricsHandler)]
