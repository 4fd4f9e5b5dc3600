"""Base handler: OpenAI-style JSON errors (never a stack trace), auth, client address."""
from __future__ import annotations

import json
import logging
from typing import Any

import tornado.web

from gateway.background import WarnOnce
from gateway.errors import APIError
from gateway.net import client_ip
from gateway.store import StoreError
from gateway.types import Principal

log = logging.getLogger("allyoucantoken.http")
_db_warning = WarnOnce(log)


class BaseAPIHandler(tornado.web.RequestHandler):
    """Common ground of every JSON API handler."""

    def initialize(self, gateway) -> None:
        self.gateway = gateway
        self.principal: Principal | None = None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.clear_header("Server")

    def check_xsrf_cookie(self) -> None:
        """API calls authenticate with bearer keys, not cookies: no CSRF check here."""

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, separators=(",", ":")))

    def send_api_error(self, err: APIError) -> None:
        if self._finished:
            return
        self.clear()
        self.set_status(err.status)
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.finish(json.dumps(err.body()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            return self.send_api_error(exc)
        if isinstance(exc, StoreError):
            return self.send_api_error(APIError(
                503, "The service is temporarily unavailable; please retry shortly.",
                code="service_unavailable", headers={"Retry-After": "5"}))
        if isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            message = exc.log_message or self._reason
            return self.send_api_error(APIError(status_code, message))
        self.send_api_error(APIError(500, "The server had an error while processing your "
                                          "request.", code="internal_error"))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, APIError):
            return
        if isinstance(value, tornado.web.HTTPError):
            return super().log_exception(typ, value, tb)
        if isinstance(value, StoreError):     # answered 503 + Retry-After (write_error)
            return _db_warning.warning("database unavailable (%s): answering 503",
                                       typ.__name__)
        # Exception type and route only: a traceback's locals could hold request content.
        log.error("unhandled %s on %s %s", typ.__name__ if typ else "error",
                  self.request.method, self.request.path)

    def check_body_size(self) -> None:
        limit = self.gateway.config.server.max_body_bytes
        declared = self.request.headers.get("Content-Length")
        if (declared and declared.isdigit() and int(declared) > limit) or \
                len(self.request.body or b"") > limit:
            raise APIError(413, f"Request body too large: the limit is {limit} bytes.",
                           code="request_too_large")

    async def require_principal(self) -> Principal:
        principal = await self.gateway.authenticate(self.request)
        if principal is None:
            raise APIError(401, "You didn't provide an API key. Provide it in the "
                                "Authorization header: 'Authorization: Bearer YOUR_KEY'.",
                           code="missing_api_key")
        self.principal = principal
        return principal

    def client_ip(self) -> str:
        return client_ip(self.request, self.gateway.config.server.trusted_proxies)


class NotFoundHandler(BaseAPIHandler):
    """Unknown API routes answer with a JSON 404."""

    def prepare(self) -> None:
        raise APIError(404, f"Unknown request URL: {self.request.method} {self.request.path}.",
                       code="unknown_url")
