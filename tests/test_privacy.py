"""Prompts and completions are never stored or logged: a canary hunt through every
MongoDB collection and the server's whole log output (at DEBUG level)."""
import uuid

import openai

from tests.helpers import db_run


async def _everything(store):
    return {n: await store.dump_collection(n) for n in await store.collection_names()}


def test_canary_never_reaches_storage_or_logs(start_gw):
    gw = start_gw({"server": {"log_level": "DEBUG"}})
    key = gw.create_key("privacy@example.com")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    canary = "CANARY-" + uuid.uuid4().hex
    prompt = f"Repeat this code exactly: {canary}. Then write a sentence about the sea."

    stream = client.chat.completions.create(model="smollm2-135m", stream=True, max_tokens=40,
                                            messages=[{"role": "user", "content": prompt}])
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    plain = client.chat.completions.create(model="smollm2-135m", max_tokens=40,
                                           messages=[{"role": "user", "content": prompt}])
    completion = plain.choices[0].message.content
    text = client.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=20)
    # A bad request carrying the canary must not leak it through an error path either.
    try:
        client.chat.completions.create(model="smollm2-135m", temperature=9,
                                       messages=[{"role": "user", "content": canary}])
    except openai.BadRequestError:
        pass
    assert len(streamed) > 10 and len(completion) > 10
    gw.stop()  # flushes the usage buffer and the logs

    data = db_run(gw.db_uri, gw.db_name, _everything)
    assert data["usage_hourly"] and data["usage_daily"], "usage should have been recorded"
    assert sum(d["requests"] for d in data["usage_daily"]) == 4   # the 400 counts too
    assert sum(d.get("status_4xx", 0) for d in data["usage_daily"]) == 1   # as an error
    events = gw.usage_events()
    assert len(events) == 4, "the opt-in per-request log should hold every answered request"
    haystacks = {"mongodb": repr(data), "log": gw.log(),
                 "usage log": (gw.data_dir / "usage-events.jsonl").read_text()}
    needles = {"canary": canary, "streamed completion": streamed.strip()[:40],
               "completion": completion.strip()[:40],
               "text completion": text.choices[0].text.strip()[:30]}
    for where, hay in haystacks.items():
        for what, needle in needles.items():
            if len(needle) >= 12:
                assert needle not in hay, f"{what} found in {where}"
    assert "POST /v1/chat/completions" in haystacks["log"]   # the log did capture requests

    fields = set().union(*(e.keys() for e in events))
    assert fields <= {"request_id", "account_id", "key_id", "model", "kind", "transport",
                      "status", "error_code", "prompt_tokens", "completion_tokens", "estimated",
                      "ttft_ms", "duration_ms", "queue_ms", "ts"}
    rollup_fields = set().union(*(d.keys() for d in data["usage_hourly"]))
    assert rollup_fields <= {"_id", "account_id", "key_id", "model", "hour", "day", "applied",
                             "requests", "prompt_tokens", "completion_tokens", "errors",
                             "estimated", "status_2xx", "status_4xx", "status_5xx",
                             "ttft_ms_sum", "ttft_count", "ttft_hist", "duration_ms_sum",
                             "duration_hist", "queue_ms_sum", "queued", "queue_hist"}
