"""The access log line of an HTTP request, and the end of its drain bookkeeping."""
from __future__ import annotations

import logging

from gateway.http import drain

from gateway.obs import logredact

from gateway.http import requestid

_access_log = logging.getLogger("allyoucantoken.access")


def log_request(handler) -> None:
    """Access log: status, method, path (no query string), duration, request id (and the
    completion id of a generation). Never bodies. JSON logs get the same as fields.
    ``handler``: a Tornado handler, or anything with ``request`` and ``get_status()``.
    The request stops counting as in flight (:data:`gateway.http.drain.IN_FLIGHT`)."""
    request = handler.request
    drain.IN_FLIGHT.discard(request)
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    if not _access_log.isEnabledFor(level):
        return          # the line would be dropped: not built at all
    rid, completion = requestid.of(request), requestid.completion_id(request)
    # The path and method are escaped (no line breaks, controls or "x=y" look-alikes
    # in a text line) and redacted.
    fields = {"request_id": logredact.redact(rid),
              "method": logredact.escape_path(request.method),
              "path": logredact.redact(logredact.escape_path(request.path)), "status": status,
              "duration_ms": round(1000.0 * request.request_time(), 1)}
    message = "%(status)d %(method)s %(path)s %(duration_ms).1fms request_id=%(request_id)s"
    if completion:
        fields["completion_id"] = completion
        if completion != rid:
            message += " completion_id=%(completion_id)s"
    _access_log.log(level, message % fields, extra=fields)
