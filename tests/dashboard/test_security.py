"""Sessions, cookies, CSRF, headers, admin-only routes, no account enumeration and
sign-in throttling, against a real gateway (in-process: tests.inprocess) over HTTP."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from argon2 import PasswordHasher

from tests.dashboard.conftest import ADMIN, dash_sections
from tests.dashboard.support import HTML, Browserless, assert_api_error
from tests.dashboard.test_accounts import PASSWORD, active_user, create_key, new_email
from tests.helpers import db_run
from tests.inprocess import start_inprocess

COOKIE = "ayct_session"


@pytest.fixture(scope="module")
def dash_gw(mongo, inbox, tmp_path_factory):
    """The dashboard test gateway (tests.dashboard.conftest), in-process."""
    gw = start_inprocess(tmp_path_factory.mktemp("dash"), mongo.uri, dash_sections(inbox.port))
    yield gw
    gw.stop()


def set_cookies(resp: httpx.Response) -> list[str]:
    return resp.headers.get_list("set-cookie")


def test_one_cookie_with_safe_flags(dash_gw):
    client = Browserless(dash_gw.url)
    page = client.get("/dashboard/login", headers=HTML)
    (cookie,) = set_cookies(page)
    assert cookie.startswith(f"{COOKIE}=")
    flags = cookie.lower()
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
    assert "secure" not in flags                                 # plain HTTP here
    resp = client.login(*ADMIN)
    assert resp.status_code == 303
    assert [c.split("=")[0] for c in set_cookies(resp)] == [COOKIE]
    assert list(client.cookies.keys()) == [COOKIE]


def test_every_page_sets_only_the_session_cookie(dash_gw, admin):
    names = set()
    for path in ("/", "/dashboard", "/dashboard/keys", "/dashboard/account",
                 "/dashboard/account/export", "/dashboard/admin", "/dashboard/admin/audit",
                 "/dashboard/admin?status=all", "/dashboard/static/style.css",
                 "/dashboard/nope", "/dashboard/login", "/dashboard/register",
                 "/dashboard/forgot", "/dashboard/reset?token=x"):
        for accept in ({}, HTML):
            resp = admin.get(path, headers=accept)
            names |= {c.split("=")[0] for c in set_cookies(resp)}
    assert names <= {COOKIE}
    assert list(admin.cookies.keys()) == [COOKIE]


def test_new_session_id_on_login_and_logout_destroys_it(dash_gw):
    client = Browserless(dash_gw.url)
    client.get("/dashboard/login", headers=HTML)
    before = client.cookies[COOKIE]
    assert client.login(*ADMIN).status_code == 303
    after = client.cookies[COOKIE]
    assert after != before
    # the pre-login id does not become a signed-in session (no fixation)
    stale = Browserless(dash_gw.url, cookies={COOKIE: before})
    assert_api_error(stale.get("/dashboard"), 401)
    stolen = Browserless(dash_gw.url, cookies={COOKIE: after})
    assert stolen.get("/dashboard").status_code == 200
    token = client.csrf("/dashboard")
    assert client.post("/dashboard/logout", data={"_csrf": token}).status_code == 303
    assert_api_error(stolen.get("/dashboard"), 401)            # gone server-side
    sessions = db_run(dash_gw.db_uri, dash_gw.db_name, lambda s: s.dump_collection("sessions"))
    assert all(after not in str(s) for s in sessions)           # only hashes are stored


def test_csrf_token_required_on_every_form(dash_gw, admin):
    acc = db_run(dash_gw.db_uri, dash_gw.db_name, lambda s: s.accounts.by_email(ADMIN[0]))
    forms = ["/dashboard/logout", "/dashboard/keys", "/dashboard/keys/revoke",
             "/dashboard/account/password", "/dashboard/account/close",
             f"/dashboard/admin/accounts/{acc['_id']}/status",
             f"/dashboard/admin/accounts/{acc['_id']}/tier"]
    other = Browserless(dash_gw.url)
    foreign = other.csrf("/dashboard/login")                    # valid, but another session's
    for path in forms:
        assert_api_error(admin.post(path, data={"name": "x"}), 403, "csrf_failed")
        assert_api_error(admin.post(path, data={"_csrf": foreign, "name": "x"}), 403,
                         "csrf_failed")
    for path in ("/dashboard/login", "/dashboard/register", "/dashboard/forgot",
                 "/dashboard/reset"):
        assert_api_error(other.post(path, data={"email": "a@b.cd", "password": "x"}), 403,
                         "csrf_failed")
    assert admin.get("/dashboard").status_code == 200           # still signed in
    page = admin.post("/dashboard/keys", data={"name": "x"}, headers=HTML)
    assert page.status_code == 403 and "<html" in page.text and "expired" in page.text


def test_security_headers(dash_gw):
    for path in ("/dashboard/login", "/dashboard/static/style.css", "/dashboard/missing"):
        resp = httpx.get(dash_gw.url + path, headers=HTML)
        h = resp.headers
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert "default-src 'none'" in h["content-security-policy"]
        assert h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "same-origin"
        assert h["x-content-type-options"] == "nosniff"


def test_pages_are_autoescaped(dash_gw, admin, inbox):
    client, _ = active_user(dash_gw, admin, inbox)
    create_key(client, "<script>alert(1)</script>")
    page = client.get("/dashboard/keys", headers=HTML).text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


def admin_routes(gw):
    acc = db_run(gw.db_uri, gw.db_name, lambda s: s.accounts.by_email(ADMIN[0]))
    return [("GET", "/dashboard/admin"), ("GET", "/dashboard/admin?status=all"),
            ("GET", "/dashboard/admin/audit"), ("GET", "/dashboard/admin/overview"),
            ("POST", f"/dashboard/admin/accounts/{acc['_id']}/status"),
            ("POST", f"/dashboard/admin/accounts/{acc['_id']}/tier"),
            ("GET", f"/dashboard/admin/accounts/{acc['_id']}"),
            ("POST", f"/dashboard/admin/accounts/{acc['_id']}/email"),
            ("POST", "/dashboard/admin/keys/controls")]


def test_admin_routes_refuse_users_and_visitors(dash_gw, admin, inbox):
    user, _ = active_user(dash_gw, admin, inbox)
    token = user.csrf("/dashboard")
    visitor = Browserless(dash_gw.url)
    visitor_token = visitor.csrf("/dashboard/login")
    routes = admin_routes(dash_gw)
    from dashboard.plugin import PAGES
    assert len([p for p, _ in PAGES if p.startswith("/dashboard/admin")]) == len(routes) - 1
    for method, path in routes:
        data = {"action": "suspend", "tier": "pro"}
        resp = user.request(method, path, data={"_csrf": token, **data}
                            if method == "POST" else None)
        assert_api_error(resp, 403, "admin_only")
        resp = visitor.request(method, path, data={"_csrf": visitor_token, **data}
                               if method == "POST" else None)
        assert_api_error(resp, 401, "not_signed_in")
        if method == "GET":
            page = visitor.get(path, headers=HTML)
            assert page.status_code == 302 and page.headers["location"] == "/dashboard/login"
            assert user.get(path, headers=HTML).status_code == 403
    acc = db_run(dash_gw.db_uri, dash_gw.db_name, lambda s: s.accounts.by_email(ADMIN[0]))
    assert acc["status"] == "active" and acc["tier"] == "free"   # nothing changed
    for method, path in routes:                                  # but the admin may
        if method == "GET":
            assert admin.get(path, headers=HTML).status_code == 200


def test_registration_does_not_reveal_existing_accounts(dash_gw, inbox):
    taken = new_email()
    first = Browserless(dash_gw.url).register(taken, PASSWORD)
    again = Browserless(dash_gw.url).register(taken, "some other passphrase")
    fresh = Browserless(dash_gw.url).register(new_email(), PASSWORD)
    assert first.status_code == again.status_code == fresh.status_code == 200
    assert again.text.replace(taken, "") == fresh.text.replace(taken, "")
    inbox.wait_for(taken, "registration attempt")             # the owner is told instead


def test_login_does_not_reveal_existing_accounts(dash_gw, inbox):
    taken = new_email()
    Browserless(dash_gw.url).register(taken, PASSWORD)
    wrong = Browserless(dash_gw.url).login(taken, "not the password!")
    unknown = Browserless(dash_gw.url).login(new_email(), "not the password!")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_login_throttled_per_account_even_for_unknown_emails(dash_gw, admin, inbox):
    client, email_addr = active_user(dash_gw, admin, inbox)
    for _ in range(3):                                         # login_max_failures = 3
        assert_api_error(Browserless(dash_gw.url).login(email_addr, "wrong password!"), 401)
    err = assert_api_error(Browserless(dash_gw.url).login(email_addr, PASSWORD), 429,
                           "too_many_attempts")
    assert "Try again" in err["message"]
    unknown = new_email()
    for _ in range(3):
        Browserless(dash_gw.url).login(unknown, "wrong password!")
    assert_api_error(Browserless(dash_gw.url).login(unknown, "wrong password!"), 429)
    assert client.get("/dashboard").status_code == 200         # existing sessions unaffected


def test_sessions_expire_when_idle_and_absolutely(dash_gw):
    async def go(store):
        t0 = datetime.now(UTC)
        token, _ = await store.sessions.create("acc_x", idle=60, absolute=300, now=t0)
        assert await store.sessions.get(token, idle=60, now=t0 + timedelta(seconds=50))
        assert await store.sessions.get(token, idle=60, now=t0 + timedelta(seconds=100))
        assert await store.sessions.get(token, idle=60, now=t0 + timedelta(seconds=200)) is None
        token, _ = await store.sessions.create("acc_x", idle=60, absolute=100, now=t0)
        for s in (40, 80):                                     # kept busy...
            assert await store.sessions.get(token, idle=60, now=t0 + timedelta(seconds=s))
        assert await store.sessions.get(token, idle=60,    # ...but not past the absolute end
                                        now=t0 + timedelta(seconds=101)) is None
    db_run(dash_gw.db_uri, dash_gw.db_name, go)


def test_password_hash_upgraded_on_login(dash_gw):
    email_addr = new_email()
    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)

    async def make(store):
        await store.accounts.create(email_addr, tier="free", status="active",
                                    password_hash=weak)
    db_run(dash_gw.db_uri, dash_gw.db_name, make)
    assert Browserless(dash_gw.url).login(email_addr, PASSWORD).status_code == 303
    stored = db_run(dash_gw.db_uri, dash_gw.db_name,
                    lambda s: s.accounts.by_email(email_addr))["password_hash"]
    assert stored != weak and stored.startswith("$argon2id$v=19$m=8192,t=2,p=1$")
    assert Browserless(dash_gw.url).login(email_addr, PASSWORD).status_code == 303


def test_session_cookie_authenticates_api_calls_with_csrf_header(dash_gw, admin, inbox):
    client, _ = active_user(dash_gw, admin, inbox)
    assert client.get("/v1/models").status_code == 200
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi there"}]}
    assert_api_error(client.post("/v1/chat/completions", json=body), 401)
    token = client.csrf("/dashboard")
    assert client.post("/v1/chat/completions", json=body,
                       headers={"X-CSRF-Token": token}).status_code == 200
    assert_api_error(Browserless(dash_gw.url).get("/v1/models"), 401)


def test_unknown_pages_and_bad_methods_get_json_errors(dash_gw):
    assert_api_error(httpx.get(dash_gw.url + "/dashboard/nope"), 404, "unknown_url")
    assert_api_error(httpx.delete(dash_gw.url + "/dashboard/login"), 405)
    page = httpx.get(dash_gw.url + "/dashboard/nope", headers=HTML)
    assert page.status_code == 404 and "<html" in page.text and "Traceback" not in page.text
