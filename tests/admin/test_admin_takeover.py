"""Issue 22, security 5: an admin:write API key cannot take over another admin (change
the address, ask for a reset to it, sign in, mint a key). API keys may not change an
admin's address; the dashboard asks for the acting admin's password; the old address
is told and can undo the change (address back, sessions ended, keys minted since
revoked, a password set since cleared)."""
from __future__ import annotations

import re

import httpx

from dashboard.passwords import Passwords
from tests.admin.conftest import admin_key, bearer, make_account, new_email
from tests.dashboard.conftest import ADMIN, FAST_ARGON2
from tests.dashboard.support import Browserless, assert_api_error, wait_until
from tests.helpers import db_run

VICTIM_PASSWORD = "victim-password-0123"
ATTACKER_PASSWORD = "attacker-password-4567"


def api(gw, method, path, key, **kw):
    return httpx.request(method, gw.url + "/admin/api" + path, timeout=30,
                         headers=bearer(key), **kw)


def account(gw, account_id):
    return db_run(gw.db_uri, gw.db_name, lambda s: s.accounts.get(account_id))


def make_admin(gw, email):
    """An active admin with a password and one API key (created before any change)."""
    hasher = Passwords(FAST_ARGON2["argon2_time_cost"], FAST_ARGON2["argon2_memory_cost"],
                       FAST_ARGON2["argon2_parallelism"])

    async def go(store):
        acc = await store.accounts.create(email, tier="free", status="active",
                                          roles=["admin"],
                                          password_hash=await hasher.hash(VICTIM_PASSWORD))
        key, _ = await store.keys.create(acc["_id"], "victim's own")
        return acc, key
    return db_run(gw.db_uri, gw.db_name, go)


def chat(gw, key):
    return httpx.post(gw.url + "/v1/chat/completions", headers=bearer(key), timeout=30,
                      json={"model": "echo", "messages": [{"role": "user", "content": "x"}]})


def test_an_admin_write_key_cannot_change_an_admin_address(admin_gw, admin_inbox):
    victim, _ = make_admin(admin_gw, new_email("victim"))
    write = admin_key(admin_gw, "admin:read", "admin:write")
    own_id = db_run(admin_gw.db_uri, admin_gw.db_name,
                    lambda s: s.accounts.by_email(ADMIN[0]))["_id"]
    for target in (victim["_id"], own_id):       # another admin, and the key's own admin
        err = assert_api_error(api(admin_gw, "PATCH", f"/accounts/{target}", write,
                                   json={"email": new_email("attacker")}),
                               403, "admin_account_protected")
        assert "API keys cannot change an admin account" in err["message"]
        assert err["param"] == "email"
    assert account(admin_gw, victim["_id"])["email"] == victim["email"]
    assert account(admin_gw, own_id)["email"] == ADMIN[0]
    # a user's address is still corrected through the API; the old address can undo it
    user, _ = make_account(admin_gw)
    moved = new_email("moved")
    resp = api(admin_gw, "PATCH", f"/accounts/{user['_id']}", write, json={"email": moved})
    assert resp.status_code == 200 and resp.json()["email"] == moved
    body = admin_inbox.wait_for(user["email"], "email address").get_content()
    assert "undo" in body and re.search(r"enter this code:\s+(acc_\w+\.\S+)", body)


def test_changing_an_admin_address_needs_the_password_and_the_old_owner_can_undo(
        admin_gw, admin_client, admin_inbox):
    old = new_email("victim")
    victim, victim_key = make_admin(admin_gw, old)
    page = f"/dashboard/admin/accounts/{victim['_id']}"
    assert 'name="current_password"' in admin_client.get(page, headers={
        "Accept": "text/html"}).text
    new = new_email("attacker")
    # a signed-in admin's session alone is not enough: the password is asked again
    assert_api_error(admin_client.submit(f"{page}/email", {"email": new}, form_page=page),
                     401, "reauthentication_required")
    assert_api_error(admin_client.submit(f"{page}/email", {"email": new, "current_password":
                                                           "not-the-password"},
                                         form_page=page), 400, "invalid_password")
    assert account(admin_gw, victim["_id"])["email"] == old
    resp = admin_client.submit(f"{page}/email", {"email": new, "current_password": ADMIN[1]},
                               form_page=page)
    assert resp.status_code == 303, resp.text
    assert account(admin_gw, victim["_id"])["email"] == new
    notice = admin_inbox.wait_for(old, "email address").get_content()
    assert new in notice and "undo" in notice
    code = re.search(r"enter this code:\s+(acc_\w+\.\S+)", notice).group(1)
    assert code not in admin_gw.log()

    # whoever holds the new address: reset, sign in, mint an admin key
    attacker = Browserless(admin_gw.url)
    assert attacker.submit("/dashboard/forgot", {"email": new}).status_code == 200
    reset = admin_inbox.wait_for(new, "reset").get_content()
    token = re.search(r"enter this code:\s+(\S+)", reset).group(1)
    assert attacker.submit("/dashboard/reset", {"token": token,
                                                "password": ATTACKER_PASSWORD}).status_code == 200
    assert attacker.login(new, ATTACKER_PASSWORD).status_code == 303
    minted = attacker.submit("/dashboard/keys", {"name": "mine", "scope": "admin:write"})
    assert minted.status_code == 201
    minted_key = re.search(r'id="new-key">([^<]+)<', minted.text).group(1)
    assert api(admin_gw, "GET", "/accounts", minted_key).status_code == 200

    # the old owner undoes it from the notice
    owner = Browserless(admin_gw.url)
    form = owner.get("/dashboard/email/undo?token=" + code, headers={"Accept": "text/html"})
    assert form.status_code == 200 and code in form.text
    done = owner.submit("/dashboard/email/undo", {"token": code},
                        form_page="/dashboard/email/undo")
    assert done.status_code == 200 and old in done.text, done.text
    doc = account(admin_gw, victim["_id"])
    assert doc["email"] == old and doc["password_hash"] is None and doc["roles"] == ["admin"]
    assert attacker.get("/dashboard/keys").status_code == 401          # session ended
    wait_until(lambda: api(admin_gw, "GET", "/accounts", minted_key).status_code == 401,
               timeout=10)                                             # minted key revoked
    assert chat(admin_gw, victim_key).status_code == 200               # older key kept
    assert Browserless(admin_gw.url).login(old, ATTACKER_PASSWORD).status_code == 401
    assert Browserless(admin_gw.url).login(new, ATTACKER_PASSWORD).status_code == 401
    undone = admin_inbox.wait_for(old, "undone").get_content()
    assert "1 API key(s)" in undone and "Forgot password" in undone
    audit = db_run(admin_gw.db_uri, admin_gw.db_name,
                   lambda s: s.audit.for_target(victim["_id"]))
    assert [e["action"] for e in audit] == ["change_email", "create_admin_key",
                                            "undo_email_change"]
    assert audit[-1]["details"]["keys_revoked"] == 1 and old not in str(audit)
    # the code works once; a made-up one not at all
    again = Browserless(admin_gw.url)
    assert_api_error(again.submit("/dashboard/email/undo", {"token": code},
                                  form_page="/dashboard/email/undo"), 400, "invalid_token")
    assert_api_error(again.submit("/dashboard/email/undo", {"token": f"{victim['_id']}.x"},
                                  form_page="/dashboard/email/undo"), 400, "invalid_token")
