"""Base handler of the JSON API: errors (:class:`gateway.errors.ErrorRenderer`: OpenAI-style
JSON, never a stack trace), auth, body size, client address."""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import tornado
import tornado.web
from tornado import httputil

from gateway.http import tornado_compat
from gateway.background import WarnOnce
from gateway.errors import APIError, ErrorRenderer
from gateway.http.net import client_ip
from gateway.store import StoreError
from gateway.types import Principal

log = logging.getLogger("allyoucantoken.http")
_db_warning = WarnOnce(log)


_SERVER = "TornadoServer/%s" % tornado.version
_date: list = [0, ""]   # the second and its HTTP date


def http_date() -> str:
    """The current time as an HTTP ``Date`` value (formatted once a second)."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, httputil.format_timestamp(now)
    return _date[1]


class APIRequestMixin(ErrorRenderer):
    """What every JSON API request handler does, whatever serves the HTTP: errors
    (a database outage is a 503), auth, body size, client address. Needs ``gateway``,
    ``request`` and the handler methods ``ErrorRenderer`` uses (``set_status``,
    ``set_header``, ``finish``...): a Tornado ``RequestHandler``
    (:class:`BaseAPIHandler`) or the lean path's :class:`gateway.http.lean.LeanHandler`."""

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, separators=(",", ":")))

    def error_for(self, status_code: int, exc: BaseException | None) -> APIError:
        """A database outage is a 503 with Retry-After; the rest as every handler."""
        if isinstance(exc, StoreError):
            return APIError(503, "The service is temporarily unavailable; please retry "
                                 "shortly.", code="service_unavailable",
                            headers={"Retry-After": "5"})
        return super().error_for(status_code, exc)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, StoreError):     # answered 503 + Retry-After (error_for)
            return _db_warning.warning("database unavailable (%s): answering 503",
                                       typ.__name__)
        super().log_exception(typ, value, tb)

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


class BaseAPIHandler(APIRequestMixin, tornado.web.RequestHandler):
    """Common ground of every JSON API handler served by the Tornado application."""

    def initialize(self, gateway) -> None:
        self.gateway = gateway
        self.principal: Principal | None = None

    def clear(self) -> None:
        """Tornado's ``clear`` (same headers), with the ``Date`` value formatted once a
        second rather than per response."""
        tornado_compat.reset_response(self, httputil.HTTPHeaders(
            {"Server": _SERVER, "Content-Type": "text/html; charset=UTF-8",
             "Date": http_date()}))

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.clear_header("Server")

    def check_xsrf_cookie(self) -> None:
        """API calls authenticate with bearer keys, not cookies: no CSRF check here."""


class NotFoundHandler(BaseAPIHandler):
    """Unknown API routes answer with a JSON 404."""

    def prepare(self) -> None:
        raise APIError(404, f"Unknown request URL: {self.request.method} {self.request.path}.",
                       code="unknown_url")
