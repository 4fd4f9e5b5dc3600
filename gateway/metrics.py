"""Prometheus metrics (prometheus_client); served at /metrics."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("ayct_requests_total", "API requests", ["route", "model", "status"])
ACTIVE_STREAMS = Gauge("ayct_active_streams", "Streams in progress", ["transport"])
TTFT = Histogram("ayct_time_to_first_token_seconds", "Time to first token", ["model"],
                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
OVERHEAD = Histogram("ayct_gateway_overhead_seconds",
                     "Time from request arrival until the backend is called",
                     buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1))
TOKENS = Counter("ayct_tokens_total", "Tokens relayed", ["model", "direction"])
BACKEND_ERRORS = Counter("ayct_backend_errors_total", "Backend errors", ["model", "code"])
LIMIT_REJECTIONS = Counter("ayct_limit_rejections_total", "Requests denied by a limit", ["limit"])
USAGE_DROPPED = Counter("ayct_usage_events_dropped_total", "Usage events dropped (buffer full)")
