"""No account enumeration by timing: the password-reset request and the registration
answer as fast for an address that has an account as for one that has none.

Measured over a real gateway on HTTP, in interleaved pairs (the order within each pair
is random) so that a slow moment of a loaded machine hits both kinds alike; the median
of the paired differences is compared with a bound well below the gaps the old code
showed (~76 ms for the reset request, ~20 ms for registration on a 2-core machine)."""
from __future__ import annotations

import random
import statistics
import time

import pytest

from gateway.store import embedded_db
from tests.dashboard.conftest import dashboard_sections
from tests.dashboard.support import Browserless, wait_until
from tests.dashboard.test_accounts import PASSWORD, new_email
from tests.helpers import db_run, start_gateway

PAIRS = 30
# Cheap argon2 (well within its noise): registration hashes the password on both paths.
CHEAP_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost": 1024, "argon2_parallelism": 1}


@pytest.fixture(scope="module")
def gw(inbox, tmp_path_factory):
    """A gateway on the embedded SQLite engine (the default deployment: database
    writes cost milliseconds there, which is what made the gaps measurable)."""
    tmp = tmp_path_factory.mktemp("timing")
    db = embedded_db.start("sqlite", str(tmp / "db.sqlite"))
    gateway = start_gateway(tmp, db.uri, dashboard_sections(inbox.port, **CHEAP_ARGON2))
    yield gateway
    gateway.stop()
    db.stop()


def _create_accounts(gw, emails, status="active"):
    async def go(store):
        for e in emails:
            await store.accounts.create(e, tier="free", status=status)
    db_run(gw.db_uri, gw.db_name, go)


def paired_gap(post, known: list[str], unknown: list[str], pause: float = 0.2):
    """Median of (known - unknown) response times over interleaved pairs, and the two
    medians, in milliseconds. ``pause`` lets work done after an answer finish before
    the next request, so that no request pays for the previous one."""
    rng = random.Random(6)
    diffs, times = [], {"known": [], "unknown": []}
    for pair in zip(known, unknown):
        order = [("known", pair[0]), ("unknown", pair[1])]
        rng.shuffle(order)
        took = {}
        for kind, address in order:
            t0 = time.perf_counter()
            resp = post(address)
            took[kind] = (time.perf_counter() - t0) * 1000
            assert resp.status_code == 200, resp.text[:300]
            times[kind].append(took[kind])
            time.sleep(pause)
        diffs.append(took["known"] - took["unknown"])
    return (statistics.median(diffs), statistics.median(times["known"]),
            statistics.median(times["unknown"]))


def test_password_reset_request_takes_as_long_for_any_address(gw, inbox):
    known = [new_email() for _ in range(PAIRS)]
    unknown = [new_email() for _ in range(PAIRS)]
    _create_accounts(gw, known)
    client = Browserless(gw.url)
    csrf = client.csrf("/dashboard/forgot")

    def post(address):
        return client.post("/dashboard/forgot", data={"_csrf": csrf, "email": address})
    post(new_email())                                          # warm up the route
    gap, known_ms, unknown_ms = paired_gap(post, known, unknown)
    print(f"reset request: known {known_ms:.1f} ms, unknown {unknown_ms:.1f} ms, "
          f"paired gap {gap:.1f} ms")
    assert abs(gap) < 12, (gap, known_ms, unknown_ms)
    # The work still happens, after the answer: every known address gets its code.
    for address in known:
        assert "enter this code" in inbox.wait_for(address, "reset").get_content()
    assert not any(inbox.to(address) for address in unknown)


def test_registration_takes_as_long_for_a_taken_address(gw, inbox):
    taken = [new_email() for _ in range(PAIRS)]
    fresh = [new_email() for _ in range(PAIRS)]
    _create_accounts(gw, taken, status="pending")
    client = Browserless(gw.url)
    csrf = client.csrf("/dashboard/register")

    def post(address):
        return client.post("/dashboard/register", data={
            "_csrf": csrf, "email": address, "password": PASSWORD, "tier": "free"})
    post(new_email())
    gap, taken_ms, fresh_ms = paired_gap(post, taken, fresh)
    print(f"registration: taken {taken_ms:.1f} ms, fresh {fresh_ms:.1f} ms, "
          f"paired gap {gap:.1f} ms")
    assert abs(gap) < 8, (gap, taken_ms, fresh_ms)
    # Both kinds of mail still go out, and the new accounts exist.
    inbox.wait_for(taken[-1], "registration attempt")
    inbox.wait_for(fresh[-1], "registration")
    accounts = wait_until(lambda: db_run(gw.db_uri, gw.db_name,
                                         lambda s: s.accounts.list(status="pending")))
    assert set(fresh) <= {a["email"] for a in accounts}
