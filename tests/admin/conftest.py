"""Fixtures of the admin and per-key control tests: a gateway (echo backend) with
tiers that set limits, loopback as a trusted proxy (so X-Forwarded-For picks the client
address), a short key cache TTL, and mail to a real SMTP server."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.dashboard.conftest import ADMIN, dashboard_sections
from tests.dashboard.support import Browserless, Inbox
from tests.helpers import db_run, free_port, start_gateway

KEY_TTL = 0.3
TIERS = {"free": {"requests_per_minute": 1000, "tokens_per_minute": 200000,
                  "tokens_per_day": 1000000},
         "pro": {"requests_per_minute": 5000},
         "narrow": {"requests_per_minute": 20, "models": ["echo"]}}


def admin_sections(smtp_port: int) -> dict:
    sections = dashboard_sections(smtp_port, login_max_failures=50,
                                  login_max_failures_ip=1000)
    sections["tiers"] = TIERS
    sections["models"] = [{"name": "echo", "backend": "echo"},
                          {"name": "echo-b", "backend": "echo"}]
    sections["server"] = {"trusted_proxies": ["127.0.0.1/32"]}
    sections["auth"] = {"key_cache_ttl": KEY_TTL}
    sections["limits"] = {"lease_idle": 0.4}
    return sections


@pytest.fixture(scope="package")
def admin_inbox():
    box = Inbox(free_port())
    box.start()
    yield box
    box.stop()


@pytest.fixture(scope="package")
def admin_gw(mongo, admin_inbox, tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("admin"), mongo.uri,
                       admin_sections(admin_inbox.port))
    yield gw
    gw.stop()


@pytest.fixture
def admin_client(admin_gw):
    client = Browserless(admin_gw.url)
    assert client.login(*ADMIN).status_code == 303
    yield client
    client.close()


def new_email(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}@example.com"


def make_account(gw, tier: str = "free", status: str = "active", email: str | None = None,
                 roles: list[str] | None = None, keys: int = 1, scopes=None,
                 **controls) -> tuple[dict, list[str]]:
    """An account and its keys, straight through the store (fast)."""
    async def go(store):
        acc = await store.accounts.create(email or new_email(), tier=tier, status=status,
                                          roles=roles)
        made = [(await store.keys.create(acc["_id"], f"k{i}", scopes=scopes, **controls))[0]
                for i in range(keys)]
        return acc, made
    return db_run(gw.db_uri, gw.db_name, go)


def admin_key(gw, *scopes: str) -> str:
    """A key of the configured admin account with the given scopes."""
    async def go(store):
        acc = await store.accounts.by_email(ADMIN[0])
        return (await store.keys.create(acc["_id"], "automation", scopes=list(scopes)))[0]
    return db_run(gw.db_uri, gw.db_name, go)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def run(coro):
    return asyncio.run(coro)
