import asyncio
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from tests.helpers import db_run

TIERS = {
    "rpm5": {"requests_per_minute": 5},
    "rpm6": {"requests_per_minute": 6},
    "streams2": {"concurrent_streams": 2},
    "streams1": {"concurrent_streams": 1},
    "streams3": {"concurrent_streams": 3},
    "daily": {"tokens_per_day": 20000, "max_tokens": 20},
    "tokens": {"tokens_per_minute": 400, "tokens_per_day": 100000, "max_tokens": 20},
    "clamp": {"max_tokens": 3, "max_tokens_policy": "clamp"},
    "narrow": {"models": ["echo"], "max_prompt_chars": 200},
    "roomy": {"requests_per_minute": 100, "concurrent_streams": 2, "tokens_per_minute": 10000},
}
LEASE_IDLE = 0.4     # seconds until an idle account's unused quota and slots go back
MODELS = [{"name": "echo", "backend": "echo"},
          {"name": "echo-slow", "backend": "echo", "options": {"delay": 0.2}},
          {"name": "echo-b", "backend": "echo"}]


def limits_config(**extra):
    cfg = {"plugins": {"modules": ["tests.plugins.echo_backend",
                                   "tests.plugins.model_pause_limiter"]},
           "models": MODELS, "tiers": TIERS,
           "limits": {"default_tier": "rpm5", "lease_ttl": 3.0, "lease_idle": LEASE_IDLE},
           "auth": {"key_cache_ttl": 0.5}}
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="package")
def limits_gw(mongo, tmp_path_factory):
    from tests.helpers import start_gateway
    gw = start_gateway(tmp_path_factory.mktemp("limits"), mongo.uri, limits_config())
    yield gw
    gw.stop()


class Account:
    """A fresh account with one key in a given tier."""

    def __init__(self, gw, tier):
        self.gw = gw
        self.email = f"{tier}-{uuid.uuid4().hex[:8]}@example.com"
        self.key = gw.create_key(self.email, tier=tier)
        self.id = db_run(gw.db_uri, gw.db_name,
                         lambda s: s.accounts.by_email(self.email))["_id"]

    @property
    def headers(self):
        return {"Authorization": f"Bearer {self.key}"}

    def live_leases(self, gw=None, settled=False):
        """Stream slots held for this account by live gateway processes; ``settled``:
        after idle processes have given theirs back."""
        gw = gw or self.gw
        if settled:
            time.sleep(LEASE_IDLE * 3)
        return db_run(gw.db_uri, gw.db_name,
                      lambda s: s.counters.live_leases(f"slots:{self.id}"))

    def counter(self, field):
        """This minute's server-side counter ("requests" or "tokens"), once the
        gateway has given back the unused part of its lease (after LEASE_IDLE)."""
        time.sleep(LEASE_IDLE * 3)
        window = f"{datetime.now(UTC):%Y%m%d%H%M}"
        return db_run(self.gw.db_uri, self.gw.db_name,
                      lambda s: s.counters.quota_values(f"q:m:{self.id}", window)).get(field, 0)


def body(model="echo", text="hello there", **kw):
    return {"model": model, "messages": [{"role": "user", "content": text}], **kw}


def wait_for_fresh_minute(margin=8):
    """Start a burst well inside one fixed minute window."""
    if datetime.now(UTC).second > 60 - margin:
        time.sleep(61 - datetime.now(UTC).second)


async def burst(urls_and_headers, n_each, payload):
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=500)) as c:
        tasks = [c.post(url + "/v1/chat/completions", json=payload, headers=h)
                 for url, h in urls_and_headers for _ in range(n_each)]
        return await asyncio.gather(*tasks)
