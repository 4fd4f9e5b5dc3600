"""The whole account journey in a real browser (Debian's chromium through Playwright):
register -> email received -> admin approves -> user signs in -> creates a key -> uses
it with the API -> sees usage -> exports data -> closes the account. Throughout, the
browser holds at most one cookie for the site: the session cookie. The overview page
is saved as docs/dashboard.png for the README. The gateway runs in-process
(tests.inprocess)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.dashboard.conftest import ADMIN, dash_sections
from tests.dashboard.support import wait_until
from tests.dashboard.test_accounts import PASSWORD
from tests.inprocess import start_inprocess


@pytest.fixture(scope="module")
def dash_gw(mongo, inbox, tmp_path_factory):
    """The dashboard test gateway (tests.dashboard.conftest), in-process."""
    gw = start_inprocess(tmp_path_factory.mktemp("dash"), mongo.uri, dash_sections(inbox.port))
    yield gw
    gw.stop()


def one_cookie(context, url: str, exactly: bool = True) -> None:
    """The site's cookies: exactly the session cookie (or none, right after it ended)."""
    cookies = context.cookies(url)
    assert len(cookies) == 1 if exactly else len(cookies) <= 1, cookies
    for c in cookies:
        assert c["name"] == "ayct_session" and c["httpOnly"] and c["sameSite"] == "Lax"


def chat(gw, key: str, text: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "echo", "messages": [{"role": "user", "content": text}]})


def test_account_journey_in_a_real_browser(dash_gw, inbox, browser, tmp_path, screenshot_path):
    url = dash_gw.url
    email_addr = "ada@example.com"
    # JavaScript off: every page and form works without it.
    user_ctx = browser.new_context(viewport={"width": 1100, "height": 900},
                                   java_script_enabled=False)
    page = user_ctx.new_page()
    check = lambda exactly=True: one_cookie(user_ctx, url, exactly)  # noqa: E731

    # register
    assert user_ctx.cookies(url) == []
    page.goto(url + "/dashboard/register")
    check()
    page.fill("input[name=email]", email_addr)
    page.fill("input[name=password]", PASSWORD)
    page.select_option("select[name=tier]", "pro")
    page.click("button:has-text('Register')")
    page.wait_for_selector("text=Check your email")
    check()
    assert "waiting for approval" in inbox.wait_for(email_addr, "registration").get_content()

    # the admin approves, in another browser context
    admin_ctx = browser.new_context()
    admin_page = admin_ctx.new_page()
    admin_page.goto(url + "/dashboard/login")
    admin_page.fill("input[name=email]", ADMIN[0])
    admin_page.fill("input[name=password]", ADMIN[1])
    admin_page.click("main button:has-text('Sign in')")
    admin_page.goto(url + "/dashboard/admin?status=pending")
    row = admin_page.locator(f"tr[data-email='{email_addr}']")
    row.locator("button:has-text('approve')").click()
    admin_page.wait_for_selector(f"text={email_addr}: active.")
    one_cookie(admin_ctx, url)
    inbox.wait_for(email_addr, "approved")

    # the user signs in and creates a key
    page.goto(url + "/dashboard/login")
    page.fill("input[name=email]", email_addr)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button:has-text('Sign in')")
    page.wait_for_selector("#status:has-text('active')")
    check()
    assert page.inner_text("#tier") == "pro"
    page.click("nav >> text=API keys")
    page.fill("input[name=name]", "notebook")
    page.click("button:has-text('Create key')")
    key = page.inner_text("#new-key").strip()
    assert key.startswith("ayct_")
    check()

    # ... uses it with the API ...
    for text in ("the quick brown fox", "jumps over the lazy dog again", "hello"):
        assert chat(dash_gw, key, text).status_code == 200

    # ... and sees the usage
    def usage_shown():
        page.goto(url + "/dashboard")
        return "3 requests" in page.inner_text("p.totals")
    wait_until(usage_shown)
    assert page.locator("figure svg.chart rect").count() > 0
    assert "echo" in page.inner_text("#per-model")
    assert "quick brown fox" not in page.content()
    check()
    page.screenshot(path=str(screenshot_path("dashboard.png")), full_page=True)

    # export
    page.click("nav >> text=Account")
    with page.expect_download() as info:
        page.click("#export")
    exported = json.loads(Path(info.value.path()).read_text())
    assert exported["account"]["email"] == email_addr
    assert [k["name"] for k in exported["api_keys"]] == ["notebook"]
    assert sum(d["requests"] for d in exported["usage_daily"]) == 3
    assert key not in json.dumps(exported) and "quick brown fox" not in json.dumps(exported)
    check()

    # close the account
    page.fill("section.danger-zone input[name=password]", PASSWORD)
    page.check("input[name=confirm]")
    page.click("button:has-text('Close my account')")
    page.wait_for_selector("text=Account closed")
    check(exactly=False)                        # the session ended: its cookie is cleared
    assert re.search("closed", inbox.wait_for(email_addr, "closed")["Subject"])
    wait_until(lambda: chat(dash_gw, key, "still there?").status_code in (401, 403), timeout=10)
    page.goto(url + "/dashboard")
    assert "/dashboard/login" in page.url
    check()
    user_ctx.close()
    admin_ctx.close()
