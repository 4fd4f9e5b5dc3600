"""In a real browser (Debian's chromium through Playwright, JavaScript off): an admin
finds one account among many by email and tier, opens its page and pages through a
search; a user sets per-key limits within the tier, sees them and the quota left, and
the gateway enforces them exactly."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx

from tests.admin.conftest import KEY_TTL, bearer
from tests.dashboard.conftest import ADMIN
from tests.dashboard.test_accounts import PASSWORD, approve
from tests.helpers import db_run
from tests.limits.conftest import body, wait_for_fresh_minute


def in_thread(fn, *args):
    """Run ``fn`` in a thread: Playwright's sync API holds this thread's event loop, so
    asyncio.run() (the store, async bursts) must run elsewhere."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def sign_in(page, url, email_addr, password):
    page.goto(url + "/dashboard/login")
    page.fill("input[name=email]", email_addr)
    page.fill("input[name=password]", password)
    page.click("main button:has-text('Sign in')")
    page.wait_for_selector("#status")


def test_admin_finds_an_account_among_many(admin_gw, browser, screenshot_path):
    domain = f"crowd-{uuid.uuid4().hex[:8]}.test"
    base = datetime(2025, 6, 1, tzinfo=UTC)
    docs = [{"_id": f"acc_{uuid.uuid4().hex[:24]}", "email": f"person{i:03d}@{domain}",
             "tier": ("free", "pro")[i % 2], "status": "active", "roles": [],
             "created_at": base + timedelta(minutes=i), "updated_at": base}
            for i in range(120)]
    in_thread(db_run, admin_gw.db_uri, admin_gw.db_name,
              lambda s: s.accounts.col.insert_many(docs))
    ctx = browser.new_context(viewport={"width": 1100, "height": 900},
                              java_script_enabled=False)
    page = ctx.new_page()
    sign_in(page, admin_gw.url, *ADMIN)
    page.goto(admin_gw.url + "/dashboard/admin")
    page.fill("#search input[name=q]", "PERSON07")      # part of the address, any case
    page.select_option("#search select[name=status]", "all")
    page.select_option("#search select[name=tier]", "pro")
    page.click("#search button:has-text('Search')")
    rows = page.locator("#accounts tbody tr[data-email]")
    assert rows.count() == 5                            # person071, 073, ... 079 are pro
    assert [rows.nth(i).get_attribute("data-email") for i in range(5)] == \
        [f"person{n:03d}@{domain}" for n in (79, 77, 75, 73, 71)]   # newest first
    page.screenshot(path=str(screenshot_path("admin.png")), full_page=True)
    page.click(f"a:has-text('person073@{domain}')")
    page.wait_for_selector("#account-email")
    assert page.inner_text("#account-email") == f"person073@{domain}"
    assert page.inner_text("#tier") == "pro" and page.locator("figure svg.chart").count() == 1
    page.screenshot(path=str(screenshot_path("admin-account.png")), full_page=True)
    # a search over the whole crowd is paged: 50, 50, then 20, no account twice
    page.goto(admin_gw.url + f"/dashboard/admin?q={domain}&status=all")
    seen = []
    while True:
        seen += [e.get_attribute("data-email") for e in
                 page.locator("#accounts tbody tr[data-email]").all()]
        if page.locator("#next-page").count() == 0:
            break
        page.click("#next-page")
    assert len(seen) == 120 == len(set(seen)) and seen[0] == f"person119@{domain}"
    ctx.close()


def test_user_sets_per_key_limits_and_they_hold(admin_gw, admin_client, admin_inbox,
                                                browser, screenshot_path):
    email_addr = f"keys-{uuid.uuid4().hex[:8]}@example.com"
    ctx = browser.new_context(viewport={"width": 1100, "height": 900},
                              java_script_enabled=False)
    page = ctx.new_page()
    page.goto(admin_gw.url + "/dashboard/register")
    page.fill("input[name=email]", email_addr)
    page.fill("input[name=password]", PASSWORD)
    page.select_option("select[name=tier]", "free")
    page.click("button:has-text('Register')")
    page.wait_for_selector("text=Check your email")
    assert in_thread(approve, admin_client, admin_gw, email_addr).status_code == 303
    sign_in(page, admin_gw.url, email_addr, PASSWORD)
    page.click("nav >> text=API keys")
    page.fill("#create-key input[name=name]", "ci")
    page.click("button:has-text('Create key')")
    key = page.inner_text("#new-key").strip()
    prefix = key[:13]

    form = page.locator(f"form.key-controls[data-key='{prefix}']")
    page.locator(f"tr.controls-row:has(form[data-key='{prefix}']) summary").click()
    # the form offers at most the tier's limit (the server checks it too: test_key_forms)
    assert form.locator("input[name=requests_per_minute]").get_attribute("max") == "1000"
    form.locator("input[name=requests_per_minute]").fill("3")
    form.locator("input[name=allowed_models][value=echo]").check()
    form.locator("input[name=allowed_cidrs]").fill("127.0.0.1")
    form.locator("button:has-text('Save limits')").click()
    page.wait_for_selector("text=limits saved")
    limits = page.inner_text(f"tr[data-key='{prefix}'] td.limits")
    assert "rpm: 3" in limits and "models: echo" in limits and "127.0.0.1/32" in limits
    assert "tokens/day: tier 1000000" in limits

    wait_for_fresh_minute()
    time.sleep(KEY_TTL * 2)                    # the cached key (no limits yet) has lapsed

    async def burst():
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*(c.post(admin_gw.url + "/v1/chat/completions",
                                                 headers=bearer(key), json=body())
                                          for _ in range(12)))
    statuses = Counter(r.status_code for r in in_thread(asyncio.run, burst()))
    assert statuses == {200: 3, 429: 9}
    assert httpx.post(admin_gw.url + "/v1/chat/completions", headers=bearer(key),
                      json=body("echo-b")).status_code == 403
    page.reload()
    left = page.inner_text("#quota tr[data-limit=requests_per_minute] td.remaining")
    assert left == "997"
    page.screenshot(path=str(screenshot_path("keys.png")), full_page=True)
    me = httpx.get(admin_gw.url + "/v1/me", headers=bearer(key)).json()
    assert me["key"]["limits"]["requests_per_minute"] == 3
    assert me["remaining"]["key"]["requests_per_minute"]["remaining"] == 0
    ctx.close()
