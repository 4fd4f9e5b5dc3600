"""The sign-in throttle holds under a concurrent burst: an attempt is reserved before
its password is hashed, so however many requests arrive at once, at most
``login_max_failures`` passwords are checked per account (and ``login_max_failures_ip``
per client IP) in a window. Counted with the gateway's own metric of argon2 checks."""
from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from tests.dashboard.conftest import dashboard_sections
from tests.dashboard.support import CSRF, HTML, Browserless, assert_api_error
from tests.dashboard.test_accounts import PASSWORD, new_email
from tests.helpers import db_run, start_gateway

PER_ACCOUNT, PER_IP = 5, 20
# Slow enough (tens of ms per check) that a burst is still being hashed while the
# last requests of it arrive: the window the old check-then-count code lost.
ARGON2 = {"argon2_time_cost": 2, "argon2_memory_cost": 16384, "argon2_parallelism": 1}


@pytest.fixture(scope="module")
def gw(mongo, inbox, tmp_path_factory):
    sections = dashboard_sections(inbox.port, login_max_failures=PER_ACCOUNT,
                                  login_max_failures_ip=PER_IP, **ARGON2)
    # Loopback is a trusted proxy here, so each test can be "another client IP".
    sections["server"] = {"trusted_proxies": ["127.0.0.1/32"]}
    gateway = start_gateway(tmp_path_factory.mktemp("throttle"), mongo.uri, sections)
    yield gateway
    gateway.stop()


def password_checks(gw, result: str = r"\w+") -> float:
    """argon2 checks so far (``result``: "right", "wrong", or any)."""
    text = httpx.get(gw.url + "/metrics").text
    return sum(float(v) for v in re.findall(
        rf'^ayct_password_checks_total\{{result="{result}"\}} (\S+)$', text, re.M))


def active_account(gw, password=PASSWORD) -> str:
    from dashboard.passwords import Passwords
    email = new_email()

    async def go(store):
        hashed = await Passwords(**{k.removeprefix("argon2_"): v for k, v in ARGON2.items()}
                                 ).hash(password)
        await store.accounts.create(email, tier="free", status="active", password_hash=hashed)
    db_run(gw.db_uri, gw.db_name, go)
    return email


def burst(gw, ip: str, attempts: list[tuple[str, str]]) -> list[httpx.Response]:
    """Each (email, password) from its own fresh session, all POSTed at once."""
    async def go():
        clients = [httpx.AsyncClient(base_url=gw.url, timeout=60,
                                     headers={"X-Forwarded-For": ip}) for _ in attempts]
        try:
            tokens = []
            for client in clients:                    # sessions first, outside the burst
                page = await client.get("/dashboard/login", headers=HTML)
                tokens.append(CSRF.search(page.text).group(1))
            return await asyncio.gather(*(
                client.post("/dashboard/login", data={"_csrf": token, "email": email,
                                                      "password": password})
                for client, token, (email, password) in zip(clients, tokens, attempts)))
        finally:
            for client in clients:
                await client.aclose()
    return asyncio.run(go())


def test_burst_of_wrong_passwords_checks_at_most_the_account_limit(gw):
    email = active_account(gw)
    before, wrong_before = password_checks(gw), password_checks(gw, "wrong")
    attempts = [(email, f"wrong password {i:02d}") for i in range(40)] + [(email, PASSWORD)]
    responses = burst(gw, "203.0.113.7", attempts)
    checked = password_checks(gw) - before
    wrong = password_checks(gw, "wrong") - wrong_before
    statuses = [r.status_code for r in responses]
    print(f"burst: {checked:g} passwords checked ({wrong:g} wrong); statuses {sorted(statuses)}")
    # At most PER_ACCOUNT guesses are checked. A right password gives its reservation
    # back (success is not a failure), so when it is checked early one more wrong guess
    # may be checked after it: never more than PER_ACCOUNT wrong ones.
    assert wrong <= PER_ACCOUNT, statuses
    assert checked <= PER_ACCOUNT + (responses[-1].status_code == 303), statuses
    assert statuses.count(401) == wrong and statuses.count(303) == checked - wrong
    assert statuses.count(429) == len(attempts) - checked    # the rest never hashed
    # The right password signs in only if it was one of the checked ones.
    assert responses[-1].status_code in (303, 429)


def test_right_password_while_blocked_is_refused_and_success_is_not_a_failure(gw):
    email = active_account(gw)
    for _ in range(3):       # successes give their reservation back: never blocked by them
        signed_in = burst(gw, "203.0.113.20", [(email, PASSWORD)] * 3)
        assert [r.status_code for r in signed_in] == [303] * 3
    wrong = burst(gw, "203.0.113.21", [(email, f"wrong password {i}") for i in range(5)])
    assert [r.status_code for r in wrong] == [401] * 5
    before = password_checks(gw)
    refused = burst(gw, "203.0.113.22", [(email, PASSWORD)])[0]
    assert_api_error(refused, 429, "too_many_attempts")
    assert password_checks(gw) == before


def test_burst_over_many_accounts_checks_at_most_the_ip_limit(gw):
    before = password_checks(gw)
    attempts = [(new_email(), "wrong password !") for _ in range(35)]
    responses = burst(gw, "198.51.100.9", attempts)
    checked = password_checks(gw) - before
    statuses = [r.status_code for r in responses]
    print(f"IP burst: {checked:g} passwords checked")
    assert checked <= PER_IP and statuses.count(401) == checked
    assert statuses.count(429) == len(attempts) - checked


def test_current_password_on_the_account_page_is_throttled_too(gw):
    email = active_account(gw)
    client = Browserless(gw.url, headers={"X-Forwarded-For": "192.0.2.44"})
    assert client.login(email, PASSWORD).status_code == 303

    def change(current):
        return client.submit("/dashboard/account/password", {
            "current_password": current, "new_password": "another long passphrase"},
            form_page="/dashboard/account")
    for i in range(PER_ACCOUNT):
        assert_api_error(change(f"wrong password {i}"), 400, "invalid_password")
    before = password_checks(gw)
    assert_api_error(change(PASSWORD), 429, "too_many_attempts")
    assert password_checks(gw) == before
    assert client.get("/dashboard").status_code == 200     # still signed in
