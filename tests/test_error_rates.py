"""Error rates are usage data (the privacy policy keeps them, fair use needs them):
every answered request of a known key counts in the usage rollups by status class --
also a body that fails validation, an unknown model, a model that cannot serve the
endpoint, and a request refused while the gateway drains. Metadata only, never content;
a model name the gateway does not serve is never a rollup of its own."""
from __future__ import annotations

from tests.helpers import db_run, wait_until

ECHO = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"},
                   {"name": "slow", "backend": "echo", "options": {"delay": 0.05}}]}
SECRET = "a prompt that must never be stored"


def _rollups(gw):
    return db_run(gw.db_uri, gw.db_name, lambda s: s.usage.daily.find({}, {"applied": 0})
                  .to_list())


def _sum(docs, field):
    return sum(d.get(field, 0) for d in docs)


def test_refused_requests_of_a_known_key_count_by_status_class(inprocess_gw):
    gw = inprocess_gw(ECHO)
    key = gw.create_key("errors@example.com")
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ok = {"model": "echo", "messages": [{"role": "user", "content": SECRET}]}
    answers = [
        gw.fetch("/v1/chat/completions", "POST", ok, auth),                      # 200
        gw.fetch("/v1/chat/completions", "POST", {"model": "echo", "messages": SECRET},
                 auth),                                                          # 400 schema
        gw.fetch("/v1/chat/completions", "POST", b'{"model": "echo", ', auth),   # 400 JSON
        gw.fetch("/v1/chat/completions", "POST", {**ok, "model": SECRET}, auth),  # 404
        gw.fetch("/v1/completions", "POST", {"model": "nope", "prompt": SECRET}, auth),
        gw.fetch("/v1/embeddings", "POST", {"model": "echo", "input": SECRET}, auth),  # 400
        # no key: nobody to count it for
        gw.fetch("/v1/chat/completions", "POST", ok, {"Content-Type": "application/json"}),
    ]
    assert [r.status_code for r in answers] == [200, 400, 400, 404, 404, 400, 401]

    docs = wait_until(lambda: (lambda d: d if _sum(d, "requests") >= 6 else None)(
        _rollups(gw)), 10, what="six requests in the rollups")
    assert _sum(docs, "requests") == 6
    assert _sum(docs, "status_2xx") == 1
    assert _sum(docs, "status_4xx") == 5 and _sum(docs, "errors") == 5
    assert _sum(docs, "prompt_tokens") == \
        next(d for d in docs if d["model"] == "echo")["prompt_tokens"]   # refusals: 0 tokens
    # Models: the configured one, and "-" for what named no model the gateway serves.
    assert {d["model"] for d in docs} == {"echo", "-"}
    by_model = {d["model"]: d for d in docs}
    assert by_model["echo"]["requests"] == 2        # the 200 and the embeddings 400
    assert by_model["-"]["requests"] == 4 and by_model["-"]["status_4xx"] == 4
    assert SECRET not in repr(docs)
    events = wait_until(lambda: (lambda e: e if len(e) >= 5 else None)(
        [e for e in gw.usage_events() if e.get("status") != 200]), 10, what="usage log")
    assert sorted(e["status"] for e in events) == [400, 400, 400, 404, 404]
    assert {e["kind"] for e in events} == {"chat", "completion", "embedding"}
    assert SECRET not in repr(events)


def test_a_request_refused_while_draining_counts_as_a_5xx(inprocess_gw):
    """The drain's refusal (503 ``server_shutdown``) of a request with a known key. The
    gateway is put in the state where it refuses new API requests (the end of a drain)
    directly: when that comes in a real drain is the drain's business, not this test's."""
    gw = inprocess_gw(ECHO)
    key = gw.create_key("draining@example.com")
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = {"model": "echo", "messages": [{"role": "user", "content": SECRET}]}
    assert gw.fetch("/v1/chat/completions", "POST", body, auth).status_code == 200

    def refuse(on: bool):
        async def set_state(gateway):
            gateway.draining = gateway.refusing_requests = on
        gw.run(set_state)

    refuse(True)
    try:
        refused = [gw.fetch(path, "POST", body, headers)
                   for path, headers in (("/v1/chat/completions", auth),
                                         ("/v1/completions", auth),
                                         ("/v1/chat/completions", {}))]   # no key
    finally:
        refuse(False)
    assert [r.status_code for r in refused] == [503, 503, 503]
    assert refused[0].json()["error"]["code"] == "server_shutdown"
    docs = wait_until(lambda: (lambda d: d if _sum(d, "requests") >= 3 else None)(
        _rollups(gw)), 10, what="three requests in the rollups")
    assert _sum(docs, "requests") == 3
    assert _sum(docs, "status_2xx") == 1
    assert _sum(docs, "status_5xx") == 2 and _sum(docs, "errors") == 2
    assert SECRET not in repr(docs)
