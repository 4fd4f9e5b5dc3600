"""The dashboard playground in a real browser (Debian chromium through Playwright): a
signed-in user picks a model, tokens appear as they stream over the WebSocket (session
cookie + Origin check), and Stop cancels the generation in the backend. The gateway runs
in-process (tests.inprocess)."""
from __future__ import annotations

import json

import pytest

from tests.inprocess import start_inprocess
from tests.ws.conftest import ws_sections


ADMIN = ("pg-admin@example.com", "playground-password-0123")
FAST_ARGON2 = {"argon2_time_cost": 2, "argon2_memory_cost": 8192, "argon2_parallelism": 1}


@pytest.fixture(scope="module")
def pg_gw(mongo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("playground")
    state = tmp / "state"
    state.mkdir()
    sections = ws_sections(state)
    sections["dashboard"] = {"admin_email": ADMIN[0], "admin_password": ADMIN[1], **FAST_ARGON2}
    gw = start_inprocess(tmp, mongo.uri, sections)
    gw.state_dir = state
    yield gw
    gw.stop()




def test_playground_streams_and_stops_in_a_real_browser(pg_gw, browser, screenshot_path):
    ctx = browser.new_context()
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and
            "favicon" not in (m.location or {}).get("url", "") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)

    page.goto(pg_gw.url + "/dashboard/login")
    page.fill("input[name=email]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    page.click("main button:has-text('Sign in')")
    page.wait_for_url("**/dashboard**")
    page.click("header a:has-text('Playground')")
    page.wait_for_selector("#pg-status:has-text('Connected')")
    options = page.locator("#pg-model option").all_inner_texts()
    assert {"echo", "slow-echo", "counter"} <= set(options)

    # A short answer, complete with its usage line.
    page.select_option("#pg-model", "echo")
    page.fill("#pg-input", "hello from the playground")
    page.click("#pg-send")
    reply = page.locator(".pg-assistant").nth(0)
    reply.locator(".pg-meta").wait_for()
    assert reply.locator(".pg-text").inner_text().strip() == "hello from the playground"
    assert "completion tokens" in reply.locator(".pg-meta").inner_text()
    page.screenshot(path=str(screenshot_path("playground.png")))

    # Tokens appear while the generation runs; Stop cancels it in the backend.
    page.select_option("#pg-model", "counter")
    page.fill("#pg-input", "count for me")
    page.click("#pg-send")
    reply = page.locator(".pg-assistant").nth(1)
    page.wait_for_function(
        "() => { const t = document.querySelectorAll('.pg-assistant .pg-text')[1];"
        " return t && t.textContent.split(' ').length > 20; }")
    assert page.locator("#pg-stop").is_enabled()
    assert reply.locator(".pg-meta").count() == 0   # still streaming: no final line yet
    page.click("#pg-stop")
    reply.locator(".pg-meta:has-text('Stopped')").wait_for()
    assert page.locator("#pg-send").is_enabled()
    # The backend's own report: it was closed long before its million tokens.
    (state,) = [json.loads(p.read_text()) for p in pg_gw.state_dir.glob("*.json")]
    assert state["closed"] is True and state["finished"] is False
    assert state["produced"] < 100_000

    # The conversation continues on the same socket after a stop.
    page.select_option("#pg-model", "echo")
    page.fill("#pg-input", "still here")
    page.click("#pg-send")
    page.locator(".pg-assistant").nth(2).locator(".pg-meta").wait_for()
    assert page.locator(".pg-assistant").nth(2).locator(".pg-text").inner_text().strip() == \
        "still here"

    # One cookie only (the session), no script errors, no CSP violations.
    cookies = ctx.cookies(pg_gw.url)
    assert [c["name"] for c in cookies] == ["ayct_session"], cookies
    assert not problems, problems
    ctx.close()
