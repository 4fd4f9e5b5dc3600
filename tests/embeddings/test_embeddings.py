"""POST /v1/embeddings with the official openai SDK against the real SmolLM2 model
(llama.cpp embedding mode): vectors, usage, rollups, limits, errors."""
import base64
import math
import uuid

import httpx
import numpy as np
import openai
import pytest

from tests.helpers import db_run, wait_until

MODEL = "smollm2-135m"
DIM = 576   # SmolLM2-135M's hidden size
TIERS = {"free": {}, "tight": {"tokens_per_minute": 60}}


@pytest.fixture(scope="module")
def gw(mongo, tmp_path_factory):
    """The real model in embedding mode, in-process (tests.inprocess)."""
    from tests.inprocess import start_inprocess
    g = start_inprocess(tmp_path_factory.mktemp("emb"), mongo.uri,
                      {"tiers": TIERS, "plugins": {"modules": ["tests.plugins.echo_backend"]},
                       "models": [{"name": MODEL, "backend": "llamacpp"},
                                  {"name": "echo", "backend": "echo"}]})
    yield g
    g.stop()


def client(gw, key):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def account_id(gw, email):
    return db_run(gw.db_uri, gw.db_name, lambda s: s.accounts.by_email(email))["_id"]


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_sdk_embeddings_vectors_usage_and_rollups(gw):
    email = f"emb-{uuid.uuid4().hex[:8]}@example.com"
    key = gw.create_key(email)
    texts = ["The cat sat on the mat.", "A kitten rests on a rug.",
             "Quarterly revenue rose by four percent."]
    resp = client(gw, key).embeddings.create(model=MODEL, input=texts)   # SDK asks base64
    assert [d.index for d in resp.data] == [0, 1, 2]
    vecs = [np.array(d.embedding) for d in resp.data]
    assert all(v.shape == (DIM,) for v in vecs)
    assert all(abs(np.linalg.norm(v) - 1) < 1e-3 for v in vecs)   # unit length
    # Real embeddings: the two cat sentences are closer to each other than to finance.
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2])
    assert resp.usage.prompt_tokens > 10 and resp.usage.total_tokens == resp.usage.prompt_tokens
    assert resp.model == MODEL

    # Float encoding gives the same vector as base64; a single string is one vector.
    one = client(gw, key).embeddings.create(model=MODEL, input=texts[0],
                                            encoding_format="float")
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, vecs[0], atol=1e-5)

    # Rollups: two requests, and exactly the prompt tokens the responses reported.
    acct = account_id(gw, email)

    def rollup():
        docs = db_run(gw.db_uri, gw.db_name, lambda s: s.usage.daily_for_account(acct))
        mine = [d for d in docs if d.get("model") == MODEL]
        return mine if mine and sum(d["requests"] for d in mine) >= 2 else None
    docs = wait_until(rollup, what="the embedding usage rollup")
    assert sum(d["requests"] for d in docs) == 2
    assert sum(d["prompt_tokens"] for d in docs) == \
        resp.usage.prompt_tokens + one.usage.prompt_tokens
    assert sum(d["completion_tokens"] for d in docs) == 0
    events = wait_until(lambda: [e for e in gw.usage_events() if e.get("account_id") == acct],
                        what="the per-request usage events (flushed every second)")
    assert {e["kind"] for e in events} == {"embedding"}


def test_token_array_inputs_and_base64_on_the_wire(gw):
    key = gw.create_key()
    r = httpx.post(gw.url + "/v1/embeddings", headers={"Authorization": f"Bearer {key}"},
                   json={"model": MODEL, "input": [[504, 2444, 28], [504]],
                         "encoding_format": "base64"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens"] == 4        # exactly the ids sent
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (DIM,) and math.isclose(float(np.linalg.norm(vec)), 1, rel_tol=1e-3)


def test_tokens_per_minute_counts_embedding_prompt_tokens(gw):
    key = gw.create_key(tier="tight")          # 60 tokens per minute
    c = client(gw, key)
    text = " ".join(["word"] * 20)             # ~20 tokens; each reservation ~26
    spent, codes = 0, []
    for _ in range(4):
        try:
            spent += c.embeddings.create(model=MODEL, input=text).usage.prompt_tokens
            codes.append(200)
        except openai.RateLimitError as err:
            codes.append(429)
            assert err.body["code"] == "tokens_per_minute"
            break
    # The first two fit in 60 tokens, a third does not (unless the minute turned over).
    assert codes[:2] == [200, 200] and spent >= 40
    assert 429 in codes


def test_errors_name_the_field(gw):
    key = gw.create_key()
    h = {"Authorization": f"Bearer {key}"}

    def post(body):
        return httpx.post(gw.url + "/v1/embeddings", headers=h, json=body, timeout=60)
    r = post({"model": MODEL, "input": "hi", "dimensions": 64})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    r = post({"model": MODEL, "input": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = post({"model": MODEL, "input": "hi", "encoding_format": "hex"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "encoding_format"
    r = post({"model": MODEL, "input": "hi", "temperature": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = post({"model": MODEL, "input": [[10 ** 7]]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = post({"model": "nope", "input": "hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": MODEL, "input": "hi"})
    assert r.status_code == 401
    # Same dimension as the model: accepted.
    assert post({"model": MODEL, "input": "hi", "dimensions": DIM}).status_code == 200


def test_models_say_which_can_embed_and_others_refuse(gw):
    key = gw.create_key()
    caps = {m.id: m.model_extra["capabilities"] for m in client(gw, key).models.list().data}
    assert "embeddings" in caps[MODEL] and "chat" in caps[MODEL]
    assert caps["echo"] == ["chat", "completions"]
    with pytest.raises(openai.BadRequestError) as err:
        client(gw, key).embeddings.create(model="echo", input="hi")
    assert err.value.body["code"] == "model_not_supported"
    assert err.value.body["param"] == "model"


def test_openai_compatible_upstream_serves_embeddings(gw, start_gw):
    """A second gateway relays embeddings to the first one (a real OpenAI-compatible
    upstream with the real model): same vectors, the upstream's token count."""
    upstream_key = gw.create_key()
    front = start_gw({"models": [
        {"name": "remote", "backend": "openai_compatible",
         "options": {"base_url": gw.url + "/v1", "api_key": upstream_key,
                     "upstream_model": MODEL, "embeddings": True}},
        {"name": "remote-chat", "backend": "openai_compatible",
         "options": {"base_url": gw.url + "/v1", "api_key": upstream_key,
                     "upstream_model": MODEL}}]})
    key = front.create_key()
    texts = ["red apples", "green pears"]
    direct = client(gw, upstream_key).embeddings.create(model=MODEL, input=texts)
    relayed = client(front, key).embeddings.create(model="remote", input=texts)
    assert relayed.model == "remote"
    for a, b in zip(direct.data, relayed.data):
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)
    assert relayed.usage.prompt_tokens == direct.usage.prompt_tokens
    caps = {m.id: m.model_extra["capabilities"] for m in client(front, key).models.list().data}
    assert "embeddings" in caps["remote"] and "embeddings" not in caps["remote-chat"]
    with pytest.raises(openai.BadRequestError) as err:
        client(front, key).embeddings.create(model="remote-chat", input="hi")
    assert err.value.body["param"] == "model"
    # An upstream's 400 comes back as a 400.
    r = httpx.post(front.url + "/v1/embeddings", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "remote", "input": "hi", "dimensions": 3}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_rejected"


def test_token_ids_that_are_floats_are_a_400_not_a_500(gw):
    """Issue 22, security 6: JSON Schema's "integer" takes 1.0; the prompt estimate then
    raised a TypeError (500) for [1.0], with any model."""
    key = gw.create_key()
    for model in (MODEL, "echo"):
        for body, param in (([1.0], "input[0]"), ([3, 2.0], "input[1]"),
                            ([[1], [4, 5.0]], "input[1][2]" if False else "input[1][1]")):
            r = httpx.post(gw.url + "/v1/embeddings", headers={"Authorization": f"Bearer {key}"},
                           json={"model": model, "input": body}, timeout=60)
            assert r.status_code == 400, (model, body, r.status_code, r.text[:300])
            err = r.json()["error"]
            assert err["param"] == param and err["code"] == "invalid_type", err
            assert "token id" in err["message"] and "Traceback" not in r.text


def test_more_inputs_than_max_inputs_is_a_400_before_admission(gw):
    """Issue 22, security 3: ``embeddings.max_inputs`` (default 256) caps the inputs of
    one request; more is a 400 naming the option and ``input``, and spends no quota."""
    key = gw.create_key(tier="tight")          # 60 tokens per minute
    h = {"Authorization": f"Bearer {key}"}
    for body in (["a"] * 257, [[504]] * 257, [[504, 28]] * 2048):
        r = httpx.post(gw.url + "/v1/embeddings", headers=h, timeout=60,
                       json={"model": MODEL, "input": body})
        assert r.status_code == 400, r.text     # not a 429: checked before the limiters
        err = r.json()["error"]
        assert err["param"] == "input" and err["code"] == "too_many_inputs"
        assert "embeddings.max_inputs" in err["message"] and "256" in err["message"]
    # No quota was spent: two requests of ~26 tokens still fit in the minute's 60.
    text = " ".join(["word"] * 20)
    for _ in range(2):
        r = httpx.post(gw.url + "/v1/embeddings", headers=h, timeout=60,
                       json={"model": MODEL, "input": text})
        assert r.status_code == 200, r.text
    # At the cap: served.
    r = httpx.post(gw.url + "/v1/embeddings", timeout=120,
                   headers={"Authorization": f"Bearer {gw.create_key()}"},
                   json={"model": MODEL, "input": [[504]] * 256})
    assert r.status_code == 200 and len(r.json()["data"]) == 256


def test_max_inputs_is_checked_at_start():
    from gateway.config import ConfigError, from_dict
    assert from_dict({}).embeddings.max_inputs == 256
    assert from_dict({"embeddings": {"max_inputs": 2048}}).embeddings.max_inputs == 2048
    for bad in (0, 2049):
        with pytest.raises(ConfigError, match="embeddings.max_inputs"):
            from_dict({"embeddings": {"max_inputs": bad}})
