"""Fair use: an account far above normal use is flagged and, when configured, suspended
(and its owner emailed through the outbox)."""
import time

import httpx

from tests.dashboard.conftest import ADMIN, FAST_ARGON2
from tests.dashboard.support import Browserless
from tests.helpers import db_run
from tests.limits.conftest import Account, body, limits_config


def test_high_error_rate_flags_and_suspends(start_gw):
    gw = start_gw(limits_config(fair_use={"enabled": True, "check_interval": 0.3,
                                          "min_requests": 5, "max_error_rate": 0.5,
                                          "auto_suspend": True},
                                dashboard={"admin_email": ADMIN[0], "admin_password": ADMIN[1],
                                           **FAST_ARGON2}))
    bad = Account(gw, "roomy")
    good = Account(gw, "roomy")
    for _ in range(5):
        assert httpx.post(gw.url + "/v1/chat/completions", headers=bad.headers,
                          json=body("echo", "FAIL")).status_code == 502
        assert httpx.post(gw.url + "/v1/chat/completions", headers=good.headers,
                          json=body("echo")).status_code == 200

    def account(a):
        return db_run(gw.db_uri, gw.db_name, lambda s: s.accounts.get(a.id))

    start = time.monotonic()
    while account(bad).get("status") != "suspended":
        assert time.monotonic() - start < 10, "not suspended"
        time.sleep(0.2)
    flag = account(bad)["abuse_flag"]
    assert "error rate 100%" in flag["reason"]
    assert account(good)["status"] == "active" and "abuse_flag" not in account(good)
    time.sleep(1.0)   # the key cache (0.5 s) forgets the active account
    r = httpx.post(gw.url + "/v1/chat/completions", headers=bad.headers, json=body())
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_inactive"
    mails = db_run(gw.db_uri, gw.db_name, lambda s: s.outbox.find(to=bad.email))
    assert any("suspended" in m["subject"] for m in mails)
    # Admins see the flag on the accounts page.
    with Browserless(gw.url) as admin:
        assert admin.login(*ADMIN).status_code == 303
        page = admin.get("/dashboard/admin?status=suspended").text
    row = page.split(f'data-email="{bad.email}"', 1)[1].split("</tr>", 1)[0]
    assert "flagged" in row and "error rate 100%" in row


def test_daily_volume_threshold_only_flags_without_auto_suspend(start_gw):
    gw = start_gw(limits_config(fair_use={"enabled": True, "check_interval": 0.3,
                                          "max_daily_tokens": 30}))
    heavy = Account(gw, "roomy")
    for _ in range(3):
        httpx.post(gw.url + "/v1/chat/completions", headers=heavy.headers,
                   json=body("echo", " ".join(["w"] * 10)))
    start = time.monotonic()
    while "abuse_flag" not in db_run(gw.db_uri, gw.db_name, lambda s: s.accounts.get(heavy.id)):
        assert time.monotonic() - start < 10, "not flagged"
        time.sleep(0.2)
    acct = db_run(gw.db_uri, gw.db_name, lambda s: s.accounts.get(heavy.id))
    assert acct["status"] == "active" and "tokens today" in acct["abuse_flag"]["reason"]
