"""Fixtures of the WebSocket tests: one gateway with the echo and counting test backends."""
import pytest

from tests.helpers import db_run, start_gateway

TIERS = {"free": {}, "tiny": {"requests_per_minute": 2}}


def ws_sections(state_dir, **websocket) -> dict:
    return {
        "plugins": {"modules": ["tests.plugins.echo_backend", "tests.ws.counting_backend"]},
        "models": [
            {"name": "echo", "backend": "echo"},
            {"name": "slow-echo", "backend": "echo", "options": {"delay": 0.05}},
            {"name": "counter", "backend": "counting",
             "options": {"tokens": 1_000_000, "delay": 0.002, "state_dir": str(state_dir),
                         "progress_every": 20}},
        ],
        "tiers": TIERS,
        "auth": {"key_cache_ttl": 0.5},
        "websocket": {"max_message_bytes": 4096, "max_in_flight": 3, **websocket},
    }


def start_ws_gw(start, tmp, uri):
    """A gateway with the WebSocket caps lowered for the tests, started by ``start``
    (``tests.helpers.start_gateway`` or ``tests.inprocess.start_inprocess``)."""
    state = tmp / "state"
    state.mkdir()
    gw = start(tmp, uri, ws_sections(state, allowed_origins=["https://app.example.com"]))
    gw.state_dir = state
    gw.email = "ws@example.com"
    gw.key = gw.create_key(gw.email)
    return gw


@pytest.fixture(scope="module")
def ws_gw(mongo, tmp_path_factory):
    """A gateway process with the WebSocket caps lowered for the tests."""
    gw = start_ws_gw(start_gateway, tmp_path_factory.mktemp("ws"), mongo.uri)
    yield gw
    gw.stop()


def account_id(gw, email: str) -> str:
    async def get(store):
        return (await store.accounts.by_email(email))["_id"]
    return db_run(gw.db_uri, gw.db_name, get)


def usage_events(gw, email: str) -> list[dict]:
    """This account's per-request usage log entries, newest first."""
    aid = account_id(gw, email)
    return [e for e in reversed(gw.usage_events()) if e.get("account_id") == aid]
