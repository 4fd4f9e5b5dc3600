"""Retention: personal data of closed, rejected and suspended accounts is erased after
the retention period, usage kept for billing is anonymised. The test drives the clock
by passing ``now`` to the same job the gateway runs in the background."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from dashboard.retention import run_retention
from tests.dashboard.support import Browserless, wait_until
from tests.dashboard.test_accounts import (PASSWORD, account_of, active_user, approve, chat,
                                           create_key, new_email)
from tests.helpers import db_run


def test_retention_erases_after_the_period_and_anonymises_usage(dash_gw, admin, inbox):
    gw = dash_gw
    closed_client, closed = active_user(gw, admin, inbox)
    key = create_key(closed_client)
    for text in ("a b c", "d e"):
        assert chat(gw, key, text).status_code == 200
    acc_id = account_of(gw, closed)["_id"]
    wait_until(lambda: sum(d["requests"] for d in db_run(
        gw.db_uri, gw.db_name, lambda s: s.usage.daily_for_account(acc_id))) == 2)
    closed_client.submit("/dashboard/account/close", {"password": PASSWORD, "confirm": "yes"},
                         form_page="/dashboard/account")
    suspended_client, suspended = active_user(gw, admin, inbox)
    approve(admin, gw, suspended, "suspend")
    rejected = new_email()
    Browserless(gw.url).register(rejected, PASSWORD)
    approve(admin, gw, rejected, "reject")
    _, active = active_user(gw, admin, inbox)
    pending = new_email()
    Browserless(gw.url).register(pending, PASSWORD)
    for who in (closed, suspended, rejected):
        inbox.wait_for(who, "")
    ids = {e: account_of(gw, e)["_id"] for e in (closed, suspended, rejected, active, pending)}
    now = datetime.now(UTC)

    async def usage_totals(store):
        daily = await store.dump_collection("usage_daily")
        return sum(d.get("completion_tokens", 0) for d in daily)
    before_total = db_run(gw.db_uri, gw.db_name, usage_totals)

    # Day 89: nothing is due yet.
    assert db_run(gw.db_uri, gw.db_name,
                  lambda s: run_retention(s, 90, now + timedelta(days=89))) == []
    # Day 91: the three inactive accounts go; active and pending ones stay.
    erased = db_run(gw.db_uri, gw.db_name,
                    lambda s: run_retention(s, 90, now + timedelta(days=91)))
    assert sorted(erased) == sorted(ids[e] for e in (closed, suspended, rejected))
    for e in (closed, suspended, rejected):
        assert account_of(gw, e) is None
    for e in (active, pending):
        assert account_of(gw, e) is not None

    async def everything(store):
        return {name: await store.dump_collection(name)
                for name in await store.collection_names()}
    data = json.dumps(db_run(gw.db_uri, gw.db_name, everything), default=str)
    for e in (closed, suspended, rejected):
        assert e not in data                      # no email anywhere (outbox included)
        rest = data.replace('"target_id": "' + ids[e], "")
        assert ids[e] not in rest, rest[rest.find(ids[e]) - 300:rest.find(ids[e]) + 50]
    # usage kept for billing, under an anonymous id
    assert db_run(gw.db_uri, gw.db_name, usage_totals) == before_total

    async def anon_usage(store):
        return {name: [d for d in await store.dump_collection(name)
                       if d["account_id"].startswith("anon_")]
                for name in ("usage_hourly", "usage_daily")}
    for name, anon in db_run(gw.db_uri, gw.db_name, anon_usage).items():
        assert sum(d["requests"] for d in anon) == 2, name
        assert sum(d["completion_tokens"] for d in anon) == 5, name      # 3 + 2 words
        assert all(d["key_id"] is None for d in anon), name
    # the email address can be used again
    assert Browserless(gw.url).register(closed, PASSWORD).status_code == 200
    assert account_of(gw, closed)["status"] == "pending"


def test_retention_period_is_configurable(dash_gw):
    email_addr = new_email()

    async def go(store):
        acc = await store.accounts.create(email_addr, tier="free", status="closed")
        t0 = datetime.now(UTC)
        await store.accounts.set_status(acc["_id"], "closed", when=t0)
        assert await run_retention(store, 7, t0 + timedelta(days=6)) == []
        assert await run_retention(store, 7, t0 + timedelta(days=8)) == [acc["_id"]]
    db_run(dash_gw.db_uri, dash_gw.db_name, go)
