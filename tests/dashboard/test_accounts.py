"""Registration, approval, keys, usage, export and closing, through the real gateway
over HTTP (forms like a browser sends them), with mail to a real SMTP server."""
from __future__ import annotations

import json
import re
import uuid

import httpx

from tests.dashboard.conftest import ADMIN
from tests.dashboard.support import HTML, Browserless, assert_api_error, wait_until
from tests.helpers import db_run

PASSWORD = "correct horse battery"


def new_email() -> str:
    return f"u{uuid.uuid4().hex[:10]}@example.com"


def account_of(gw, email_addr):
    return db_run(gw.db_uri, gw.db_name, lambda s: s.accounts.by_email(email_addr))


def approve(admin, gw, email_addr, action="approve"):
    acc = account_of(gw, email_addr)
    return admin.submit(f"/dashboard/admin/accounts/{acc['_id']}/status", {"action": action},
                        form_page="/dashboard/admin?status=all")


def chat(gw, key, text="one two three"):
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "echo", "messages": [{"role": "user", "content": text}]})


def active_user(gw, admin, inbox):
    email_addr = new_email()
    client = Browserless(gw.url)
    assert client.register(email_addr, PASSWORD).status_code == 200
    assert approve(admin, gw, email_addr).status_code == 303
    assert client.login(email_addr, PASSWORD).status_code == 303
    return client, email_addr


def create_key(client, name="laptop"):
    resp = client.submit("/dashboard/keys", {"name": name})
    assert resp.status_code == 201, resp.text
    return re.search(r'id="new-key">([^<]+)<', resp.text).group(1)


def test_register_is_pending_and_mails_a_confirmation(dash_gw, inbox):
    email_addr = new_email()
    client = Browserless(dash_gw.url)
    resp = client.register(email_addr, PASSWORD, tier="pro")
    assert resp.status_code == 200 and "Check your email" in resp.text
    acc = account_of(dash_gw, email_addr)
    assert acc["status"] == "pending" and acc["tier"] == "pro"
    assert acc["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in json.dumps(acc, default=str)
    msg = inbox.wait_for(email_addr, "registration")
    assert "waiting for approval" in msg.get_content()
    # pending accounts cannot sign in yet
    resp = client.login(email_addr, PASSWORD)
    assert_api_error(resp, 403, "account_inactive")


def test_weak_password_and_bad_email_get_clear_errors(dash_gw):
    client = Browserless(dash_gw.url)
    err = assert_api_error(client.register(new_email(), "short"), 400, "weak_password")
    assert "at least 10 characters" in err["message"] and err["param"] == "password"
    assert_api_error(client.register(new_email(), "password123"), 400, "weak_password")
    assert_api_error(client.register("not-an-email", PASSWORD), 400, "invalid_email")
    assert_api_error(client.register(new_email(), PASSWORD, tier="platinum"), 400,
                     "invalid_tier")
    page = client.submit("/dashboard/register", {"email": "x@example.com", "password": "a",
                                                 "tier": "free"}, html=True)
    assert page.status_code == 400 and "<form" in page.text and "at least 10" in page.text


def test_full_account_lifecycle(dash_gw, admin, inbox):
    client, email_addr = active_user(dash_gw, admin, inbox)
    inbox.wait_for(email_addr, "approved")
    overview = client.get("/dashboard", headers=HTML)
    assert overview.status_code == 200 and email_addr in overview.text
    assert 'id="status">active<' in overview.text
    key = create_key(client)
    keys_page = client.get("/dashboard/keys", headers=HTML).text
    assert "<td>never</td>" in keys_page
    assert key not in keys_page and key[:13] in keys_page   # prefix only, after creation
    stored = db_run(dash_gw.db_uri, dash_gw.db_name, lambda s: s.dump_collection("api_keys"))
    assert key not in json.dumps(stored, default=str)
    assert chat(dash_gw, key).status_code == 200
    # usage appears (events are flushed in batches)
    page = wait_until(lambda: (lambda t: t if "3 tokens in" in t else None)(
        client.get("/dashboard", headers=HTML).text))
    assert "<svg" in page and "echo" in page and "one two three" not in page
    wait_until(lambda: "<td>never</td>" not in client.get("/dashboard/keys", headers=HTML).text)
    # export
    export = client.get("/dashboard/account/export")
    assert export.status_code == 200
    assert "attachment" in export.headers["Content-Disposition"]
    data = export.json()
    assert data["account"]["email"] == email_addr and "password_hash" not in data["account"]
    assert data["api_keys"][0]["name"] == "laptop" and "sha256" not in data["api_keys"][0]
    assert data["usage_daily"][0]["requests"] == 1
    assert "one two three" not in export.text
    # close: keys refused, session ended, email sent
    assert_api_error(client.submit("/dashboard/account/close", {"password": "wrong",
                                   "confirm": "yes"}, form_page="/dashboard/account"), 400)
    closed = client.submit("/dashboard/account/close", {"password": PASSWORD, "confirm": "yes"},
                           form_page="/dashboard/account", html=True)
    assert closed.status_code == 200 and "Account closed" in closed.text
    wait_until(lambda: chat(dash_gw, key).status_code in (401, 403), timeout=10)
    assert_api_error(client.get("/dashboard"), 401)
    inbox.wait_for(email_addr, "closed")
    assert_api_error(Browserless(dash_gw.url).login(email_addr, PASSWORD), 401)


def test_admin_actions_email_and_audit(dash_gw, admin, inbox):
    client, email_addr = active_user(dash_gw, admin, inbox)
    key = create_key(client)
    assert chat(dash_gw, key).status_code == 200
    assert approve(admin, dash_gw, email_addr, "suspend").status_code == 303
    inbox.wait_for(email_addr, "suspended")
    wait_until(lambda: chat(dash_gw, key).status_code == 403, timeout=10)
    assert_api_error(client.get("/dashboard"), 401)       # the session ended
    assert_api_error(approve(admin, dash_gw, email_addr, "approve"), 409,
                     "invalid_transition")
    assert approve(admin, dash_gw, email_addr, "reactivate").status_code == 303
    inbox.wait_for(email_addr, "active again")
    wait_until(lambda: chat(dash_gw, key).status_code == 200, timeout=10)
    acc = account_of(dash_gw, email_addr)
    assert admin.submit(f"/dashboard/admin/accounts/{acc['_id']}/tier", {"tier": "pro"},
                        form_page="/dashboard/admin?status=all").status_code == 303
    assert account_of(dash_gw, email_addr)["tier"] == "pro"
    audit = admin.get("/dashboard/admin/audit", headers=HTML).text
    for action in ("approve", "suspend", "reactivate", "change_tier"):
        assert action in audit
    entries = db_run(dash_gw.db_uri, dash_gw.db_name, lambda s: s.audit.for_target(acc["_id"]))
    assert [e["action"] for e in entries] == ["approve", "suspend", "reactivate", "change_tier"]
    assert all(e["actor"] == ADMIN[0] and e["at"] for e in entries)
    assert PASSWORD not in json.dumps(entries, default=str)
    assert approve(admin, dash_gw, email_addr, "close").status_code == 303
    inbox.wait_for(email_addr, "closed")
    wait_until(lambda: chat(dash_gw, key).status_code == 401, timeout=10)  # revoked at once
    assert all(k["revoked_at"] for k in account_keys(dash_gw, email_addr))
    # nothing secret or personal in the gateway's log
    log = dash_gw.log()
    assert PASSWORD not in log and key not in log and "one two three" not in log


def test_reject(dash_gw, admin, inbox):
    email_addr = new_email()
    Browserless(dash_gw.url).register(email_addr, PASSWORD)
    assert approve(admin, dash_gw, email_addr, "reject").status_code == 303
    assert "not approved" in inbox.wait_for(email_addr, "application").get_content()
    assert_api_error(Browserless(dash_gw.url).login(email_addr, PASSWORD), 403)


def test_change_password_and_revoke_key(dash_gw, admin, inbox):
    client, email_addr = active_user(dash_gw, admin, inbox)
    other = Browserless(dash_gw.url)
    assert other.login(email_addr, PASSWORD).status_code == 303
    new = "another long passphrase"
    assert_api_error(client.submit("/dashboard/account/password", {
        "current_password": "nope", "new_password": new}, form_page="/dashboard/account"), 400)
    assert_api_error(client.submit("/dashboard/account/password", {
        "current_password": PASSWORD, "new_password": "short"},
        form_page="/dashboard/account"), 400, "weak_password")
    resp = client.submit("/dashboard/account/password", {
        "current_password": PASSWORD, "new_password": new}, form_page="/dashboard/account")
    assert resp.status_code == 303
    assert client.get("/dashboard").status_code == 200      # this session lives on
    assert_api_error(other.get("/dashboard"), 401)          # others are signed out
    inbox.wait_for(email_addr, "password was changed")
    assert Browserless(dash_gw.url).login(email_addr, new).status_code == 303
    key = create_key(client, "ci")
    assert chat(dash_gw, key).status_code == 200
    key_id = account_keys(dash_gw, email_addr)[0]["_id"]
    assert client.submit("/dashboard/keys/revoke", {"key_id": key_id},
                         form_page="/dashboard/keys").status_code == 303
    wait_until(lambda: chat(dash_gw, key).status_code == 401, timeout=10)
    assert_api_error(client.submit("/dashboard/keys/revoke", {"key_id": key_id},
                                   form_page="/dashboard/keys"), 404)


def account_keys(gw, email_addr):
    acc = account_of(gw, email_addr)
    return db_run(gw.db_uri, gw.db_name, lambda s: s.keys.for_account(acc["_id"]))


def test_password_reset_by_email(dash_gw, admin, inbox):
    client, email_addr = active_user(dash_gw, admin, inbox)
    unknown = new_email()
    known_resp = Browserless(dash_gw.url).submit("/dashboard/forgot", {"email": email_addr})
    unknown_resp = Browserless(dash_gw.url).submit("/dashboard/forgot", {"email": unknown})
    assert known_resp.status_code == unknown_resp.status_code == 200
    assert known_resp.text == unknown_resp.text                # nothing revealed
    body = inbox.wait_for(email_addr, "reset").get_content()
    code = re.search(r"enter this code:\s+(\S+)", body)
    assert code, body
    code = code.group(1)
    assert not inbox.to(unknown)
    visitor = Browserless(dash_gw.url)
    assert_api_error(visitor.submit("/dashboard/reset", {"token": code, "password": "short"}),
                     400, "weak_password")
    assert_api_error(visitor.submit("/dashboard/reset", {"token": "nope", "password":
                                                         "a brand new passphrase"}),
                     400, "invalid_token")
    done = visitor.submit("/dashboard/reset", {"token": code,
                                               "password": "a brand new passphrase"})
    assert done.status_code == 200 and "Password changed" in done.text
    assert_api_error(client.get("/dashboard"), 401)            # every session ended
    inbox.wait_for(email_addr, "password was changed")
    assert_api_error(visitor.submit("/dashboard/reset", {"token": code, "password":
                                                         "yet another passphrase"}),
                     400, "invalid_token")                     # single use
    assert Browserless(dash_gw.url).login(email_addr, "a brand new passphrase"
                                          ).status_code == 303
    assert code not in dash_gw.log()
    stored = db_run(dash_gw.db_uri, dash_gw.db_name,
                    lambda s: s.dump_collection("password_resets"))
    assert code not in json.dumps(stored, default=str)
