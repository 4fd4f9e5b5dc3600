"""Issue 22, security 6: inputs that raised unhandled 500s on the admin API and the key
forms are clear 400s (JSON for API clients, the form again for browsers), with no
trace to the client or in the log."""
from __future__ import annotations

import base64
import re

import httpx

from tests.admin.conftest import admin_key, bearer, make_account
from tests.dashboard.support import HTML, assert_api_error

FAR = "9999-12-31T23:59:59-01:00"      # in UTC: year 10000 (OverflowError)


def test_an_expiry_beyond_year_9999_is_a_400_on_every_key_form(admin_gw, admin_client):
    acc, _ = make_account(admin_gw)
    key_id = admin_client.get(f"/dashboard/admin/accounts/{acc['_id']}", headers=HTML)
    key_id = re.search(r'name="key_id" value="(key_[0-9a-f]+)"', key_id.text).group(1)
    form = {"name": "far", "expires_at": FAR}
    err = assert_api_error(admin_client.submit("/dashboard/keys", form), 400,
                           "invalid_key_controls")
    assert err["param"] == "expires_at"
    page = admin_client.submit("/dashboard/keys", form, html=True)
    assert page.status_code == 400 and "expires_at must be a date" in page.text
    own = re.search(r'name="key_id" value="(key_[0-9a-f]+)"',
                    admin_client.get("/dashboard/keys", headers=HTML).text)
    if own is None:      # the admin has no key yet: make one
        assert admin_client.submit("/dashboard/keys", {"name": "own"}).status_code == 201
        own = re.search(r'name="key_id" value="(key_[0-9a-f]+)"',
                        admin_client.get("/dashboard/keys", headers=HTML).text)
    err = assert_api_error(admin_client.submit("/dashboard/keys/controls", {
        "key_id": own.group(1), "expires_at": FAR}, form_page="/dashboard/keys"), 400,
        "invalid_key_controls")
    assert err["param"] == "expires_at"
    err = assert_api_error(admin_client.submit("/dashboard/admin/keys/controls", {
        "key_id": key_id, "expires_at": FAR}, form_page=f"/dashboard/admin/accounts/{acc['_id']}"),
        400, "invalid_key_controls")
    write = admin_key(admin_gw, "admin:read", "admin:write")
    resp = httpx.patch(f"{admin_gw.url}/admin/api/keys/{key_id}", headers=bearer(write),
                       json={"expires_at": FAR}, timeout=30)
    assert assert_api_error(resp, 400, "invalid_key_controls")["param"] == "expires_at"
    assert "Traceback" not in admin_gw.log() and "OverflowError" not in admin_gw.log()


def test_a_cursor_holding_a_date_beyond_year_9999_is_a_400(admin_gw, admin_client):
    cursor = base64.urlsafe_b64encode(f"{FAR}|acc_0123".encode()).decode().rstrip("=")
    read = admin_key(admin_gw, "admin:read")
    resp = httpx.get(f"{admin_gw.url}/admin/api/accounts", params={"cursor": cursor},
                     headers=bearer(read), timeout=30)
    assert assert_api_error(resp, 400, "invalid_cursor")["param"] == "cursor"
    assert_api_error(admin_client.get("/dashboard/admin", params={"cursor": cursor}), 400,
                     "invalid_cursor")
    assert "Traceback" not in admin_gw.log() and "OverflowError" not in admin_gw.log()


def test_deeply_nested_admin_api_bodies_are_a_400(admin_gw):
    acc, _ = make_account(admin_gw)
    write = admin_key(admin_gw, "admin:read", "admin:write")
    for path in (f"/admin/api/accounts/{acc['_id']}", "/admin/api/keys/key_00"):
        for body in (b"[" * 100_000, b'{"tier": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                     b'{"tier": NaN}'):
            resp = httpx.patch(admin_gw.url + path, headers=bearer(write), content=body,
                               timeout=30)
            assert_api_error(resp, 400, "invalid_json")
    assert "Traceback" not in admin_gw.log() and "RecursionError" not in admin_gw.log()
