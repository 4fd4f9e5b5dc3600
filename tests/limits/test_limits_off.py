"""``[limits] enabled = false`` turns the tiers' limits off, not access control: model
lists (the tier's and the key's) are authorisation, and a key's own limits are its
owner's, so both still hold, with the answers the limits-on path gives."""
import httpx

from gateway.store.keys import hash_key
from tests.helpers import db_run
from tests.limits.conftest import Account, body, limits_config, wait_for_fresh_minute


def _restrict(gw, key, **controls):
    async def go(store):
        doc = await store.keys.by_hash(hash_key(key))
        await store.keys.set_controls(doc["_id"], **controls)
    db_run(gw.db_uri, gw.db_name, go)


def test_model_lists_and_key_limits_hold_with_limits_off(start_gw):
    cfg = limits_config()
    cfg["limits"] = {**cfg["limits"], "enabled": False}
    gw = start_gw(cfg)
    url = gw.url + "/v1/chat/completions"

    narrow = Account(gw, "narrow")            # the tier lists only "echo"
    r = httpx.post(url, headers=narrow.headers, json=body("echo-slow"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert httpx.post(url, headers=narrow.headers, json=body("echo")).status_code == 200
    listed = httpx.get(gw.url + "/v1/models", headers=narrow.headers).json()["data"]
    assert [m["id"] for m in listed] == ["echo"]
    r = httpx.get(gw.url + "/v1/models/echo-slow", headers=narrow.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"

    keyed = Account(gw, "rpm5")               # the key lists only "echo", 2 requests/min
    _restrict(gw, keyed.key, allowed_models=["echo"], limits={"requests_per_minute": 2})
    r = httpx.post(url, headers=keyed.headers, json=body("echo-slow"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    wait_for_fresh_minute()
    codes = [httpx.post(url, headers=keyed.headers, json=body()).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    r = httpx.post(url, headers=keyed.headers, json=body())
    assert r.json()["error"]["code"] == "key_requests_per_minute"

    # The tiers' own limits are what the switch turns off: rpm5 passes 5 here.
    free = Account(gw, "rpm5")
    codes = [httpx.post(url, headers=free.headers, json=body()).status_code for _ in range(8)]
    assert codes == [200] * 8
    # /v1/me says so: the account's windows are unlimited, the key's limit counts.
    left = httpx.get(gw.url + "/v1/me", headers=keyed.headers).json()["remaining"]
    assert left["account"]["requests_per_minute"] is None
    assert left["key"]["requests_per_minute"]["limit"] == 2
