"""Hypothesis fuzzing of the admin API, the key forms and the embeddings endpoint (issue
22, security 6) against a real gateway with the dashboard and a real SMTP server: every
answer to bad input is a 4xx (JSON for the APIs, the page for browsers), never a 5xx
or a trace, and the log holds no traceback. Seeded (derandomize) and bounded.

Before: an expiry of 9999-12-31T23:59:59-01:00 (OverflowError), a cursor holding it,
100,000 nested "[" in an admin API body (RecursionError) and token ids such as 1.0 in
an embeddings input (TypeError) were 500s."""
from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dashboard.support import Browserless, Inbox
from tests.hardening.conftest import PLUGINS, assert_no_stall, loop_lag_ms
from tests.hardening.test_fuzz import JSON, _mutate, assert_clean_log
from tests.helpers import db_run, free_port, start_gateway

ADMIN = ("fuzz-admin@example.com", "fuzz-admin-password-01")
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MAX_LAG_MS = 100


@pytest.fixture(scope="module")
def fuzz_inbox():
    box = Inbox(free_port())
    box.start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def gw(mongo, fuzz_inbox, tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("fuzz-admin"), mongo.uri, {
        "plugins": {"modules": PLUGINS},
        "models": [{"name": "echo", "backend": "echo"}, {"name": "sink", "backend": "sink"}],
        "tiers": {"free": {"requests_per_minute": 100000, "tokens_per_day": 10**9},
                  "pro": {}, "narrow": {"requests_per_minute": 50, "models": ["echo"]}},
        "smtp": {"host": "127.0.0.1", "port": fuzz_inbox.port, "starttls": False,
                 "sender": "AllYouCanToken <no-reply@example.com>", "poll_interval": 0.2,
                 "retry_base": 0.2, "retry_max": 1.0},
        "dashboard": {"admin_email": ADMIN[0], "admin_password": ADMIN[1],
                      "argon2_time_cost": 1, "argon2_memory_cost": 8192,
                      "argon2_parallelism": 1, "register_max_per_ip": 100000,
                      "login_max_failures": 100000, "login_max_failures_ip": 100000,
                      "max_keys": 100000},
    })

    async def setup(store):
        admin = await store.accounts.by_email(ADMIN[0])
        write = (await store.keys.create(admin["_id"], "fuzz", scopes=["admin:read",
                                                                        "admin:write"]))[0]
        users = []
        for tier in ("free", "narrow", "pro"):
            acc = await store.accounts.create(f"fuzz-{tier}-{uuid.uuid4().hex[:6]}@example.com",
                                              tier=tier, status="active")
            key_doc = (await store.keys.create(acc["_id"], "k"))[1]
            users.append((acc["_id"], key_doc["_id"]))
        return admin["_id"], write, users
    gw.admin_id, gw.write, gw.users = db_run(gw.db_uri, gw.db_name, setup)
    gw.key = gw.create_key("fuzz-embed@example.com")
    loop_lag_ms(gw)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=60) as client:
        yield client


def check_json_answer(resp: httpx.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])
    assert "Traceback" not in resp.text
    if resp.status_code >= 400:
        assert resp.headers["content-type"].startswith("application/json"), resp.headers
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and len(resp.content) < 2048


# -- strategies ---------------------------------------------------------------------------

EDGE_DATES = ["9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00+01:00",
              "9999-12-31", "0001-01-01", "2999-02-29", "2030-01-01T00:00:00Z",
              "2030-01-01T25:00:00", "+002030-01-01", "2030-W01-1", "2030-01-01T00:00:00.123456789",
              "2030-01-01T00:00:00+24:00", "20300101T000000", "\u0662\u0660\u0663\u0660-01-01"]
DATES = (st.sampled_from(EDGE_DATES)
         | st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
         | st.dates().map(str) | st.text(max_size=30))
CIDRS = (st.lists(st.ip_addresses().map(str) | st.text(max_size=20), max_size=4)
         .map(" ".join) | st.text(max_size=60))
NUMBER_TEXT = (st.integers(-10, 10**13).map(str) | st.sampled_from(
    ["", "1e3", "1.5", "-0", "0x10", " 7", "\u0661\u0662", "9" * 40, "NaN"]) | st.text(max_size=8))
MODELS = st.lists(st.sampled_from(["echo", "sink", "nope", ""]) | st.text(max_size=8), max_size=3)
CONTROLS = {
    "expires_at": DATES | JSON,
    "allowed_models": MODELS | JSON,
    "allowed_cidrs": CIDRS | st.lists(st.text(max_size=20), max_size=3) | JSON,
    "limits": st.dictionaries(st.sampled_from(["requests_per_minute", "tokens_per_minute",
                                               "tokens_per_day", "x"]),
                              st.integers(-5, 10**13) | NUMBER_TEXT | JSON, max_size=4) | JSON,
}
ACCOUNT_FIELDS = {
    "status": st.sampled_from(["active", "suspended", "rejected", "closed", "pending", "x"])
    | JSON,
    "tier": st.sampled_from(["free", "pro", "narrow", "gold"]) | JSON,
    "email": st.emails().map(str) | st.text(max_size=40) | JSON,
}


def body_of(fields: dict) -> st.SearchStrategy[bytes]:
    obj = st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda body: st.dictionaries(st.text(max_size=8), JSON, max_size=1).map(
            lambda extra: {**extra, **body}) | st.just(body))
    return st.one_of(
        obj.map(lambda b: json.dumps(b).encode()),
        JSON.map(lambda b: json.dumps(b).encode()),
        st.binary(max_size=200),
        st.tuples(obj, st.integers(0, 10_000), st.sampled_from(
            ["NaN", "1e999", "[" * 100, "[" * 100_000, "{" * 70 + "}" * 70, "}", "\x00",
             "\ud800", '"', "9" * 5000])).map(
            lambda t: _mutate(json.dumps(t[0]), t[1], t[2]).encode("utf-8", "surrogatepass")),
    )


CURSORS = st.one_of(
    st.text(max_size=40),
    st.tuples(DATES, st.sampled_from(["acc_0123", "acc_", "x", ""])).map(
        lambda t: base64.urlsafe_b64encode(f"{t[0]}|{t[1]}".encode()).decode().rstrip("=")),
    st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()),
)
QUERY = st.fixed_dictionaries({}, optional={
    "q": st.text(max_size=40), "status": st.sampled_from(["active", "pending", "x", ""]),
    "tier": st.sampled_from(["free", "gold", ""]), "limit": NUMBER_TEXT, "cursor": CURSORS,
    "days": NUMBER_TEXT})


# -- the admin API ------------------------------------------------------------------------

@settings(FUZZ, max_examples=150)
@given(raw=body_of(ACCOUNT_FIELDS), who=st.integers(0, 3))
def test_fuzz_admin_api_account_patch(gw, http, raw, who):
    target = gw.admin_id if who == 3 else gw.users[who][0]
    resp = http.patch(f"{gw.url}/admin/api/accounts/{target}", content=raw,
                      headers={"Authorization": f"Bearer {gw.write}"})
    check_json_answer(resp)
    if who == 3 and resp.status_code == 200:      # never an admin's address by API key
        assert resp.json()["email"] == ADMIN[0]


@settings(FUZZ, max_examples=150)
@given(raw=body_of(CONTROLS), who=st.integers(0, 2))
def test_fuzz_admin_api_key_patch(gw, http, raw, who):
    resp = http.patch(f"{gw.url}/admin/api/keys/{gw.users[who][1]}", content=raw,
                      headers={"Authorization": f"Bearer {gw.write}"})
    check_json_answer(resp)


@settings(FUZZ, max_examples=120)
@given(query=QUERY, path=st.sampled_from(["/admin/api/accounts", "/admin/api/accounts/{id}",
                                          "/admin/api/accounts/{id}/usage"]))
def test_fuzz_admin_api_queries(gw, http, query, path):
    resp = http.get(gw.url + path.format(id=gw.users[0][0]), params=query,
                    headers={"Authorization": f"Bearer {gw.write}"})
    check_json_answer(resp)


# -- the key forms --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(gw):
    """A signed-in admin's session (cookie + CSRF token), like a browser's."""
    with Browserless(gw.url, timeout=60) as c:
        assert c.login(*ADMIN).status_code == 303
        c.csrf_token = c.csrf("/dashboard/keys")
        created = c.post("/dashboard/keys", data={"_csrf": c.csrf_token, "name": "own"})
        assert created.status_code == 201
        c.own_key = db_run(gw.db_uri, gw.db_name, lambda s: s.keys.for_account(gw.admin_id))
        c.own_key = [k for k in c.own_key if not k.get("scopes")][0]["_id"]
        yield c


FORM_TEXT = (st.text(max_size=40) | st.sampled_from(["echo", "sink", "0", "admin:write"])
             | st.text(max_size=3000))
FORM_FIELDS = {
    "name": FORM_TEXT, "scope": st.sampled_from(["", "admin:read", "admin:write", "x"]),
    "expires_at": DATES, "allowed_cidrs": CIDRS,
    "requests_per_minute": NUMBER_TEXT, "tokens_per_minute": NUMBER_TEXT,
    "tokens_per_day": NUMBER_TEXT,
}


@settings(FUZZ, max_examples=150)
@given(path=st.sampled_from(["/dashboard/keys", "/dashboard/keys/controls",
                             "/dashboard/admin/keys/controls"]),
       form=st.fixed_dictionaries({}, optional=FORM_FIELDS),
       models=MODELS, key=st.sampled_from(["own", "user", "bogus", None]),
       html=st.booleans())
def test_fuzz_key_forms(gw, browser, path, form, models, key, html):
    data = {"_csrf": browser.csrf_token, **form, "allowed_models": models}
    if key:
        data["key_id"] = {"own": browser.own_key, "user": gw.users[1][1], "bogus": "key_0"}[key]
    resp = browser.post(path, data=data, headers={"Accept": "text/html"} if html else {})
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])
    assert "Traceback" not in resp.text
    if resp.status_code >= 400:
        kind = "text/html" if html else "application/json"
        assert resp.headers["content-type"].startswith(kind), resp.headers
        if not html:
            assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


# -- the embeddings endpoint ------------------------------------------------------------------

TOKEN = st.integers(-3, 2**40) | st.floats(allow_nan=False, allow_infinity=False) | JSON
INPUT = st.one_of(
    st.text(max_size=40),
    st.lists(st.text(max_size=10), max_size=4),
    st.lists(TOKEN, max_size=6),
    st.lists(st.lists(TOKEN, max_size=4), max_size=4),
    st.lists(st.integers(0, 50) | st.floats(0, 50), min_size=1, max_size=6),
    st.lists(st.lists(st.integers(0, 50) | st.just(1.0), min_size=1, max_size=3), min_size=1,
             max_size=3),
    JSON,
)
EMBED_FIELDS = {
    "model": st.sampled_from(["echo", "sink", "nope", ""]) | JSON,
    "input": INPUT,
    "encoding_format": st.sampled_from(["float", "base64", None, "hex"]) | JSON,
    "dimensions": st.integers(-2, 5000) | JSON,
    "user": st.text(max_size=10) | JSON,
}


@settings(FUZZ, max_examples=200)
@given(raw=body_of(EMBED_FIELDS), key=st.sampled_from(["good", "good", "good", "bad", None]))
def test_fuzz_embeddings(gw, http, raw, key):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + (gw.key if key == "good" else "ayct_x" + key)
    resp = http.post(gw.url + "/v1/embeddings", content=raw, headers=headers)
    check_json_answer(resp)


def test_fuzzing_left_no_trace_and_no_stall(gw, http):
    """The reproductions of the issue, then the verdicts over everything above."""
    auth = {"Authorization": f"Bearer {gw.key}"}
    for body in ({"model": "echo", "input": [1.0]}, {"model": "echo", "input": [[2, 1.0]]}):
        resp = http.post(gw.url + "/v1/embeddings", json=body, headers=auth)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_type"
    resp = http.patch(f"{gw.url}/admin/api/accounts/{gw.users[0][0]}", content=b"[" * 100_000,
                      headers={"Authorization": f"Bearer {gw.write}"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    assert_no_stall(gw, MAX_LAG_MS)
    assert_clean_log(gw)
