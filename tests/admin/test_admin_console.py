"""The admin console at scale, through a real gateway: thousands of accounts (made
through the store), search by email, filters by status and tier, stable newest-first
pages by cursor (HTML and JSON); the account page; correcting an email address
(audited, both addresses told by real mail)."""
from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.admin.conftest import admin_key, bearer, make_account, new_email
from tests.dashboard.support import HTML, Browserless, assert_api_error, wait_until
from tests.helpers import db_run

N = 3000
ROW = re.compile(r'<tr data-email="([^"]+)"')
NEXT = re.compile(r'id="next-page" class="button" href="([^"]+)"')


@pytest.fixture(scope="module")
def bulk(admin_gw):
    """N accounts in one domain, created through the store in one batch: account i was
    created at base + i//2 seconds (pairs share a time: the _id breaks the tie), status
    and tier cycle. Returns (domain, emails newest first)."""
    domain = f"scale-{uuid.uuid4().hex[:8]}.test"
    base = datetime(2025, 1, 1, tzinfo=UTC)
    docs = [{"_id": f"acc_{uuid.uuid4().hex[:24]}", "email": f"bulk{i:04d}@{domain}",
             "tier": ("free", "pro")[i % 2], "status": ("active", "suspended", "pending")[i % 3],
             "roles": [], "created_at": base + timedelta(seconds=i // 2), "updated_at": base}
            for i in range(N)]

    async def insert(store):
        await store.accounts.col.insert_many(docs)
    db_run(admin_gw.db_uri, admin_gw.db_name, insert)
    order = sorted(docs, key=lambda d: (d["created_at"], d["_id"]), reverse=True)
    return domain, [d["email"] for d in order], docs


def test_pages_reach_account_501_and_beyond_newest_first(admin_gw, admin_client, bulk):
    domain, newest_first, _ = bulk
    url = f"/dashboard/admin?q=@{domain}&status=all"
    seen = []
    for _ in range(12):                              # 12 pages of 50: accounts 1..600
        page = admin_client.get(url, headers=HTML)
        assert page.status_code == 200
        seen += ROW.findall(page.text)
        url = NEXT.search(page.text).group(1).replace("&amp;", "&")
    assert f"{N} accounts match" in page.text
    assert seen == newest_first[:600]                # stable order, no gap, no repeat
    assert newest_first[500] in seen[500:550]        # account 501 is on page 11


def test_search_finds_one_and_filters_combine(admin_gw, admin_client, bulk):
    domain, _, docs = bulk
    page = admin_client.get(f"/dashboard/admin?q=BULK1234@{domain}", headers=HTML)
    assert ROW.findall(page.text) == [f"bulk1234@{domain}"]
    assert "1 account match" in page.text
    wanted = sorted((d for d in docs if d["status"] == "suspended" and d["tier"] == "pro"),
                    key=lambda d: (d["created_at"], d["_id"]), reverse=True)
    page = admin_client.get(f"/dashboard/admin?q={domain}&status=suspended&tier=pro",
                            headers=HTML)
    assert f"{len(wanted)} accounts match" in page.text
    assert ROW.findall(page.text) == [d["email"] for d in wanted[:50]]
    assert_api_error(admin_client.get("/dashboard/admin?cursor=bm9wZQ"), 400, "invalid_cursor")
    assert_api_error(admin_client.get("/dashboard/admin?tier=gold"), 400, "invalid_tier")


def test_admin_api_walks_every_account_by_cursor(admin_gw, bulk):
    domain, newest_first, _ = bulk
    key = admin_key(admin_gw, "admin:read")
    seen, cursor = [], None
    while True:
        params = {"q": domain, "limit": 400, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(admin_gw.url + "/admin/api/accounts", params=params,
                         headers=bearer(key), timeout=30).json()
        seen += [a["email"] for a in page["data"]]
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if cursor is None:
            break
    assert seen == newest_first
    one = httpx.get(admin_gw.url + "/admin/api/accounts", headers=bearer(key),
                    params={"q": f"bulk0042@{domain}"}).json()["data"]
    assert [a["email"] for a in one] == [f"bulk0042@{domain}"]
    assert set(one[0]) >= {"id", "email", "tier", "status", "created_at", "fair_use_flag"}
    assert_api_error(httpx.get(admin_gw.url + "/admin/api/accounts", headers=bearer(key),
                               params={"limit": 501}), 400, "invalid_parameter")


def test_account_page_shows_usage_keys_flag_and_audit(admin_gw, admin_client):
    acc, (key,) = make_account(admin_gw, limits={"requests_per_minute": 7})
    db_run(admin_gw.db_uri, admin_gw.db_name, lambda s: s.accounts.update(
        acc["_id"], abuse_flag={"reason": "error rate 90% today", "day": "2026-01-01"}))
    for _ in range(2):
        assert httpx.post(admin_gw.url + "/v1/chat/completions", headers=bearer(key),
                          json={"model": "echo", "messages": [
                              {"role": "user", "content": "hi there"}]}).status_code == 200
    path = f"/dashboard/admin/accounts/{acc['_id']}"
    admin_client.submit(f"{path}/tier", {"tier": "pro", "back": path}, form_page=path)

    def shown():
        text = admin_client.get(path, headers=HTML).text
        return text if "2 requests" in text else None
    text = wait_until(shown)
    assert 'id="tier">pro<' in text and "error rate 90% today" in text
    assert "<svg" in text and 'class="chart"' in text            # the user's usage chart
    assert "rpm: 7" in text                                       # the key's own limit
    assert re.search(r"change_tier.*tier_from: free, tier_to: pro", text, re.S)
    assert_api_error(admin_client.get("/dashboard/admin/accounts/acc_0000"), 404,
                     "account_not_found")


def test_admin_corrects_an_email_both_addresses_are_told(admin_gw, admin_client,
                                                         admin_inbox):
    old = new_email("typo")
    acc, (key,) = make_account(admin_gw, email=old)
    new = new_email("fixed")
    path = f"/dashboard/admin/accounts/{acc['_id']}"
    resp = admin_client.submit(f"{path}/email", {"email": new.upper()}, form_page=path)
    assert resp.status_code == 303
    doc = db_run(admin_gw.db_uri, admin_gw.db_name, lambda s: s.accounts.get(acc["_id"]))
    assert doc["email"] == new
    for address in (old, new):
        body = admin_inbox.wait_for(address, "email address").get_content()
        assert old in body and new in body
    audit = db_run(admin_gw.db_uri, admin_gw.db_name, lambda s: s.audit.for_target(acc["_id"]))
    entry = next(e for e in audit if e["action"] == "change_email")
    assert entry["actor"] == "admin@example.com"
    assert entry["details"] == {"email_from": old[:2] + "***@example.com",
                                "email_to": new[:2] + "***@example.com"}
    # taken and malformed addresses are refused
    other, _ = make_account(admin_gw)
    assert_api_error(admin_client.submit(f"{path}/email", {"email": other["email"]},
                                         form_page=path), 409, "email_taken")
    assert_api_error(admin_client.submit(f"{path}/email", {"email": "nope"}, form_page=path),
                     400, "invalid_email")
    assert httpx.post(admin_gw.url + "/v1/chat/completions", headers=bearer(key), json={
        "model": "echo", "messages": [{"role": "user", "content": "x"}]}).status_code == 200


def test_admin_pages_refuse_users_and_visitors(admin_gw, admin_client, admin_inbox):
    from tests.dashboard.test_accounts import active_user
    acc, _ = make_account(admin_gw)
    user, _ = active_user(admin_gw, admin_client, admin_inbox)
    token = user.csrf("/dashboard")
    for path in (f"/dashboard/admin/accounts/{acc['_id']}", "/dashboard/admin?q=x"):
        assert_api_error(user.get(path), 403, "admin_only")
        assert_api_error(Browserless(admin_gw.url).get(path), 401, "not_signed_in")
    for path, data in ((f"/dashboard/admin/accounts/{acc['_id']}/email", {"email": "a@b.co"}),
                       ("/dashboard/admin/keys/controls", {"key_id": "key_00"})):
        assert_api_error(user.post(path, data={"_csrf": token, **data}), 403, "admin_only")
    assert db_run(admin_gw.db_uri, admin_gw.db_name,
                  lambda s: s.accounts.get(acc["_id"]))["email"] == acc["email"]
