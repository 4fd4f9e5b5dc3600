"""The JSON admin API through a real gateway: admin API keys with scopes, status and
tier changes (with mail and audit), per-day usage from the rollups, OpenAI-style
errors."""
from __future__ import annotations

import httpx

from tests.admin.conftest import admin_key, bearer, make_account
from tests.dashboard.conftest import ADMIN
from tests.dashboard.support import Browserless, assert_api_error, wait_until
from tests.helpers import db_run


def api(gw, method, path, key=None, **kw):
    return httpx.request(method, gw.url + "/admin/api" + path, timeout=30,
                         headers=bearer(key) if key else {}, **kw)


def test_keys_need_the_admin_role_and_the_scope(admin_gw):
    acc, (user_key,) = make_account(admin_gw)
    _, (scoped_user_key,) = make_account(admin_gw, scopes=["admin:read", "admin:write"])
    no_scope = admin_key(admin_gw)
    read = admin_key(admin_gw, "admin:read")
    assert_api_error(api(admin_gw, "GET", "/accounts"), 401, "missing_api_key")
    assert_api_error(api(admin_gw, "GET", "/accounts", "ayct_wrong"), 401, "invalid_api_key")
    assert_api_error(api(admin_gw, "GET", "/accounts", user_key), 403, "admin_only")
    # scopes on a key are worth nothing without the admin role on its account
    assert_api_error(api(admin_gw, "GET", "/accounts", scoped_user_key), 403, "admin_only")
    assert_api_error(api(admin_gw, "GET", "/accounts", no_scope), 403, "insufficient_scope")
    assert api(admin_gw, "GET", f"/accounts/{acc['_id']}", read).status_code == 200
    err = assert_api_error(api(admin_gw, "PATCH", f"/accounts/{acc['_id']}", read,
                               json={"tier": "pro"}), 403, "insufficient_scope")
    assert "admin:write" in err["message"]
    # the dashboard session of an admin does not open the API (no CSRF protection there)
    browser = Browserless(admin_gw.url)
    assert browser.login(*ADMIN).status_code == 303
    assert_api_error(browser.get("/admin/api/accounts"), 401, "missing_api_key")
    assert_api_error(api(admin_gw, "GET", "/nothing", read), 404, "unknown_url")


def test_change_status_and_tier_mails_audits_and_applies(admin_gw, admin_inbox):
    acc, (key,) = make_account(admin_gw, status="pending")
    write = admin_key(admin_gw, "admin:read", "admin:write")
    resp = api(admin_gw, "PATCH", f"/accounts/{acc['_id']}", write,
               json={"status": "active", "tier": "pro"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "active" and resp.json()["tier"] == "pro"
    admin_inbox.wait_for(acc["email"], "approved")
    chat = lambda: httpx.post(admin_gw.url + "/v1/chat/completions", headers=bearer(key),  # noqa: E731
                              json={"model": "echo", "messages": [
                                  {"role": "user", "content": "hi"}]})
    wait_until(lambda: chat().status_code == 200, timeout=10)
    assert api(admin_gw, "PATCH", f"/accounts/{acc['_id']}", write,
               json={"status": "suspended"}).json()["status"] == "suspended"
    admin_inbox.wait_for(acc["email"], "suspended")
    wait_until(lambda: chat().status_code == 403, timeout=10)
    audit = db_run(admin_gw.db_uri, admin_gw.db_name, lambda s: s.audit.for_target(acc["_id"]))
    assert [e["action"] for e in audit] == ["change_tier", "approve", "suspend"]
    assert all(e["actor"] == ADMIN[0] for e in audit)
    # refused changes: OpenAI-style errors, nothing changed
    assert_api_error(api(admin_gw, "PATCH", f"/accounts/{acc['_id']}", write,
                         json={"status": "pending"}), 400, "invalid_status")
    assert_api_error(api(admin_gw, "PATCH", f"/accounts/{acc['_id']}", write,
                         json={"tier": "gold"}), 400, "invalid_tier")
    assert_api_error(api(admin_gw, "PATCH", f"/accounts/{acc['_id']}", write,
                         json={"plan": "x"}), 400, "unknown_parameter")
    assert_api_error(api(admin_gw, "PATCH", f"/accounts/{acc['_id']}", write,
                         content=b"{nope"), 400, "invalid_json")
    assert_api_error(api(admin_gw, "PATCH", "/accounts/acc_00", write,
                         json={"tier": "pro"}), 404, "account_not_found")
    admin_id = db_run(admin_gw.db_uri, admin_gw.db_name,
                      lambda s: s.accounts.by_email(ADMIN[0]))["_id"]
    assert_api_error(api(admin_gw, "PATCH", f"/accounts/{admin_id}", write,
                         json={"status": "suspended"}), 400, "own_account")


def test_usage_per_account_per_day_from_the_rollups(admin_gw):
    acc, (k1, k2) = make_account(admin_gw, keys=2)
    tokens = 0
    for key, model in ((k1, "echo"), (k1, "echo"), (k2, "echo-b")):
        r = httpx.post(admin_gw.url + "/v1/chat/completions", headers=bearer(key),
                       json={"model": model, "messages": [{"role": "user",
                                                           "content": "one two three"}]})
        assert r.status_code == 200
        tokens += r.json()["usage"]["completion_tokens"]
    read = admin_key(admin_gw, "admin:read")

    def usage():
        body = api(admin_gw, "GET", f"/accounts/{acc['_id']}/usage?days=7", read).json()
        return body if body["total"]["requests"] == 3 else None
    body = wait_until(usage)
    assert len(body["data"]) == 7 and body["data"][-1]["requests"] == 3
    assert all(d["requests"] == 0 for d in body["data"][:-1])
    today = body["data"][-1]
    assert today["models"]["echo"]["requests"] == 2 and today["models"]["echo-b"]["requests"] == 1
    assert today["completion_tokens"] == tokens == body["total"]["completion_tokens"]
    assert_api_error(api(admin_gw, "GET", f"/accounts/{acc['_id']}/usage?days=0", read), 400,
                     "invalid_parameter")
