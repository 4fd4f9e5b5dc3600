"""HTTP: the request guard, the lean hot path and its header parser, request ids,
the access log, the drain, the SSE writer, and the one module that touches Tornado's
internals (``tornado_compat``)."""
