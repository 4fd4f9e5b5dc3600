"""Prometheus metrics (prometheus_client); served at /metrics (see handlers/ops.py).

Label values are always bounded: model labels are configured model names (anything
else a client sends is counted as ``-``), routes are fixed strings, statuses are
HTTP codes. No label ever carries request content, a key or an account.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("ayct_requests_total", "API requests by route, model and HTTP status",
                   ["route", "model", "status"])
ACTIVE_STREAMS = Gauge("ayct_active_streams", "Generations in progress, by transport "
                       "(sse, http, ws)", ["transport"])
TTFT = Histogram("ayct_time_to_first_token_seconds",
                 "Time from request arrival to the first token relayed", ["model"],
                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
OVERHEAD = Histogram("ayct_gateway_overhead_seconds",
                     "Time from request arrival until the backend is called "
                     "(parsing, auth, limits)",
                     buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1))
TOKENS = Counter("ayct_tokens_total", "Tokens relayed (direction in = prompt, out = "
                 "completion)", ["model", "direction"])
BACKEND_ERRORS = Counter("ayct_backend_errors_total",
                         "Generations that ended in a backend error, by HTTP status",
                         ["model", "code"])
LIMIT_REJECTIONS = Counter("ayct_limit_rejections_total", "Requests denied by a limit",
                           ["limit"])
USAGE_RECORDED = Counter("ayct_usage_recorded_total", "Requests counted into usage rollups")
USAGE_SPOOLED = Counter("ayct_usage_spooled_batches_total",
                        "Usage batches written to the spool file at exit (database unreachable)")
USAGE_PERSISTING = Gauge("ayct_usage_persisting",
                         "1 while usage reaches the database; 0 while its writes fail (database "
                         "down, full or read-only): usage is then held in memory only")
USAGE_UNWRITTEN = Gauge("ayct_usage_unwritten_requests",
                        "Requests counted in memory and not yet written to the database")
USAGE_WRITE_FAILURES = Counter("ayct_usage_write_failures_total",
                               "Usage batch writes that failed (retried)")
USAGE_LOST = Counter("ayct_usage_lost_requests_total",
                     "Requests whose usage could be written neither to the database nor to "
                     "the spool file at exit")
BACKEND_RETRIES = Counter("ayct_backend_retries_total",
                          "Upstream attempts that failed before the first token (then retried "
                          "on another replica, or given up), by error code", ["model", "reason"])
MODEL_CAPACITY = Gauge("ayct_model_capacity", "Sequences a model's workers run at once "
                       "(what they report: llama.cpp instances, MLC max_num_sequence)",
                       ["model"])
QUEUE_SLOTS = Gauge("ayct_model_slots", "Sequence slots of a model across its replicas "
                    "(models with a known capacity)", ["model"])
SLOTS_BUSY = Gauge("ayct_replica_slots_busy", "Sequence slots in use, per replica",
                   ["model", "replica"])
QUEUE_WAITING = Gauge("ayct_queue_waiting", "Requests waiting in the gateway for a model's "
                      "capacity, by tier", ["model", "tier"])
QUEUE_WAIT = Histogram("ayct_queue_wait_seconds", "Time requests that had to wait spent "
                       "waiting for a slot, by tier", ["model", "tier"],
                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
REPLICA_UP = Gauge("ayct_backend_replica_up", "Upstream replica health (1 up, 0 down)",
                   ["model", "replica"])

for _transport in ("sse", "http", "ws"):
    ACTIVE_STREAMS.labels(_transport)


def count_request(gateway, route: str, model: str | None, status: int, task=None) -> None:
    """Count one finished API request; unknown model names become ``-``. A request
    whose generation ``task`` ended because the client went away counts as 499."""
    label = model if isinstance(model, str) and model in gateway.backends else "-"
    if task is not None and task.done() and (task.cancelled() or _client_gone(task)):
        status = 499
    key = (route, label, status)
    child = _request_children.get(key)
    if child is None:   # labels() validates and locks on every call: looked up once
        child = _request_children[key] = REQUESTS.labels(route, label, str(status))
    child.inc()


_request_children: dict[tuple, object] = {}


def _client_gone(task) -> bool:
    from gateway.relay.streaming import ClientGone  # noqa: PLC0415 - streaming imports metrics

    return isinstance(task.exception(), ClientGone)
