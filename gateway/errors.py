"""OpenAI-style API errors (``{"error": {"message", "type", "param", "code"}}``) and the
one way every handler renders them.

- :class:`APIError`: an error with an HTTP status, raised anywhere on the request path.
- :func:`as_api_error`: any exception as the APIError the client sees (an unexpected
  one is a bare 500 ``internal_error``: never a stack trace).
- :func:`error_message`: an APIError as a WebSocket ``error`` message.
- :class:`ErrorRenderer`: the mixin of every Tornado handler (API, WebSocket upgrade,
  dashboard) that answers an error as the API's JSON body, with its status and headers
  (``Retry-After`` on a 429); the dashboard overrides :meth:`ErrorRenderer.render_error`
  to answer browsers with an HTML page.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import tornado.web

from gateway.http.tornado_compat import response_finished, status_reason

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 502: "server_error", 503: "server_error", 504: "server_error"}


class APIError(Exception):
    """An error with an HTTP status that becomes an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


def internal_error(what: str = "request") -> APIError:
    """The 500 answered for an unexpected exception (its details stay in the server)."""
    return APIError(500, f"The server had an error while processing your {what}.",
                    code="internal_error")


def as_api_error(exc: BaseException | None, status_code: int = 500,
                 reason: str = "") -> APIError:
    """The APIError for an exception: itself, a Tornado ``HTTPError`` under 500 with its
    message (else ``reason``), anything else :func:`internal_error`."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, tornado.web.HTTPError) and status_code < 500:
        return APIError(status_code, exc.log_message or reason)
    return internal_error()


def error_message(err: APIError, req_id: Any = None) -> dict[str, Any]:
    """The WebSocket ``error`` message: the OpenAI error body plus the HTTP-like status,
    tagged with the request's ``id`` (``None``: about the socket, or no valid id)."""
    return {"type": "error", "id": req_id, "status": err.status, **err.body()}


class ErrorRenderer:
    """Mixin for a ``tornado.web.RequestHandler``: every error becomes one APIError,
    answered with its status, its headers and a body from :meth:`render_error`.

    Override points: :meth:`error_for` maps more exception types (call ``super()`` for
    the rest); :meth:`render_error` writes the body (API JSON here); ``error_log`` and
    ``quiet_errors`` choose where unexpected exceptions are logged and which are not.
    Unexpected exceptions are logged by type and route only: a traceback's locals could
    hold request content.
    """

    error_log = logging.getLogger("allyoucantoken.http")
    quiet_errors: tuple[type[BaseException], ...] = (APIError,)   # answered, not logged

    def error_for(self, status_code: int, exc: BaseException | None) -> APIError:
        """The APIError answered for ``exc`` (raised while serving with ``status_code``)."""
        return as_api_error(exc, status_code, status_reason(self))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.send_api_error(self.error_for(status_code, exc), exc)

    def send_api_error(self, err: APIError, exc: BaseException | None = None) -> None:
        """Answer ``err`` (unless the response is already finished): status, headers, body.
        ``exc``: the exception it came from, for :meth:`render_error`."""
        if response_finished(self):
            return
        self.clear()
        self.set_status(err.status)
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.render_error(err, exc)

    def render_error(self, err: APIError, exc: BaseException | None = None) -> None:
        """Write the body and finish: the OpenAI-style JSON body."""
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(err.body()))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, self.quiet_errors):
            return
        if isinstance(value, tornado.web.HTTPError):
            return super().log_exception(typ, value, tb)
        self.error_log.error("unhandled %s on %s %s", typ.__name__ if typ else "error",
                             self.request.method, self.request.path)
