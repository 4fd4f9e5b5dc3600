"""Per-key controls through the dashboard's forms (as a browser posts them): set at
creation and later, checked against the tier on the server, own keys only; admins set
any key's controls (audited) and create scoped admin API keys."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx

from tests.admin.conftest import bearer, make_account
from tests.dashboard.conftest import ADMIN
from tests.dashboard.support import assert_api_error, wait_until
from tests.dashboard.test_accounts import active_user
from tests.helpers import db_run

LIMITS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day")


def keys_of(gw, email_addr):
    async def go(store):
        acc = await store.accounts.by_email(email_addr)
        return await store.keys.for_account(acc["_id"])
    return db_run(gw.db_uri, gw.db_name, go)


def controls(**kw):
    form = {"expires_at": "", "allowed_cidrs": "", **dict.fromkeys(LIMITS, "")}
    form.update(kw)
    return form


def test_user_sets_controls_at_creation_and_later_within_the_tier(admin_gw, admin_client,
                                                                  admin_inbox):
    user, email_addr = active_user(admin_gw, admin_client, admin_inbox)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    resp = user.submit("/dashboard/keys", {"name": "ci", **controls(
        requests_per_minute="10", expires_at=tomorrow, allowed_cidrs="10.1.2.3/8 127.0.0.1",
        allowed_models="echo-b")}, form_page="/dashboard/keys")
    assert resp.status_code == 201
    (key,) = keys_of(admin_gw, email_addr)
    assert key["limits"] == {"requests_per_minute": 10}
    assert key["allowed_cidrs"] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert key["allowed_models"] == ["echo-b"] and key["scopes"] == []
    assert key["expires_at"].strftime("%Y-%m-%d") == tomorrow
    assert "rpm: 10" in resp.text and "expires: " + tomorrow in resp.text

    refused = [(controls(requests_per_minute="1001"), "requests_per_minute", "at most 1000"),
               (controls(tokens_per_day="-1"), "tokens_per_day", "whole number"),
               (controls(allowed_cidrs="10.0.0.0/33"), "allowed_cidrs", "not an IP"),
               (controls(expires_at="2001-01-01"), "expires_at", "future")]
    for form, param, text in refused:
        err = assert_api_error(user.submit("/dashboard/keys/controls",
                                           {"key_id": key["_id"], **form},
                                           form_page="/dashboard/keys"),
                               400, "invalid_key_controls")
        assert err["param"] == param and text in err["message"], err
    assert keys_of(admin_gw, email_addr)[0]["limits"] == {"requests_per_minute": 10}
    page = user.submit("/dashboard/keys/controls", {"key_id": key["_id"], **controls(
        requests_per_minute="1001")}, form_page="/dashboard/keys", html=True)
    assert page.status_code == 400 and "at most 1000" in page.text   # the page, re-shown
    assert 'id="keys"' in page.text and 'id="quota"' in page.text
    resp = user.submit("/dashboard/keys/controls", {"key_id": key["_id"], **controls(
        tokens_per_minute="5000")}, form_page="/dashboard/keys")
    assert resp.status_code == 303
    (key,) = keys_of(admin_gw, email_addr)
    assert key["limits"] == {"tokens_per_minute": 5000} and key["allowed_cidrs"] == []
    assert key["expires_at"] is None and key["allowed_models"] == []

    # someone else's key is not found, and plain users get no admin scopes
    _, (other_key,) = make_account(admin_gw)
    other_id = db_run(admin_gw.db_uri, admin_gw.db_name, lambda s: s.keys.col.find_one(
        {"prefix": other_key[:13]}))["_id"]
    assert_api_error(user.submit("/dashboard/keys/controls", {"key_id": other_id, **controls(
        requests_per_minute="1")}, form_page="/dashboard/keys"), 404, "key_not_found")
    assert_api_error(user.submit("/dashboard/keys", {"name": "x", "scope": "admin:write"},
                                 form_page="/dashboard/keys"), 403, "invalid_scope")


def test_admin_sets_a_users_key_controls_audited_and_applied(admin_gw, admin_client):
    acc, (key,) = make_account(admin_gw)
    key_id = db_run(admin_gw.db_uri, admin_gw.db_name,
                    lambda s: s.keys.for_account(acc["_id"]))[0]["_id"]
    chat = lambda model: httpx.post(  # noqa: E731
        admin_gw.url + "/v1/chat/completions", headers=bearer(key),
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]}).status_code
    assert chat("echo") == 200
    page = f"/dashboard/admin/accounts/{acc['_id']}"
    resp = admin_client.submit("/dashboard/admin/keys/controls", {
        "key_id": key_id, "allowed_models": "echo-b", **controls()}, form_page=page)
    assert resp.status_code == 303 and resp.headers["location"] == page
    wait_until(lambda: chat("echo") == 403, timeout=5)        # within the key cache TTL
    assert chat("echo-b") == 200
    audit = db_run(admin_gw.db_uri, admin_gw.db_name, lambda s: s.audit.for_target(acc["_id"]))
    entry = next(e for e in audit if e["action"] == "key_controls")
    assert entry["actor"] == ADMIN[0] and entry["details"]["allowed_models"] == ["echo-b"]
    assert entry["details"]["key"] == key[:13]


def test_admin_creates_a_scoped_key_for_the_admin_api(admin_gw, admin_client):
    resp = admin_client.submit("/dashboard/keys", {"name": "billing", "scope": "admin:read"},
                               form_page="/dashboard/keys")
    assert resp.status_code == 201 and "(admin:read)" in resp.text
    key = re.search(r'id="new-key">([^<]+)<', resp.text).group(1)
    assert httpx.get(admin_gw.url + "/admin/api/accounts?limit=1",
                     headers=bearer(key)).status_code == 200
    assert_api_error(httpx.patch(admin_gw.url + "/admin/api/accounts/acc_00", json={"tier": "x"},
                                 headers=bearer(key)), 403, "insufficient_scope")
    audit = db_run(admin_gw.db_uri, admin_gw.db_name, lambda s: s.audit.recent(20))
    assert any(e["action"] == "create_admin_key" and e["details"]["scopes"] == ["admin:read"]
               for e in audit)
