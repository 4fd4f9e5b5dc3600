"""Fixtures of the dashboard tests: a real SMTP server and a gateway (echo backend)
whose mail goes to it."""
from __future__ import annotations

import pytest

from tests.dashboard.support import Browserless, Inbox
from tests.helpers import free_port, start_gateway

ADMIN = ("admin@example.com", "admin-password-0123")
FAST_ARGON2 = {"argon2_time_cost": 2, "argon2_memory_cost": 8192, "argon2_parallelism": 1}


def dashboard_sections(smtp_port: int, **dashboard) -> dict:
    return {
        "plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}],
        "tiers": {"free": {"requests_per_minute": 1000},
                  "pro": {"requests_per_minute": 5000}},
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "starttls": False,
                 "sender": "AllYouCanToken <no-reply@example.com>", "poll_interval": 0.2,
                 "retry_base": 0.2, "retry_max": 1.0},
        "dashboard": {"admin_email": ADMIN[0], "admin_password": ADMIN[1], **FAST_ARGON2,
                      "register_max_per_ip": 1000, **dashboard},
    }


@pytest.fixture(scope="module")
def inbox():
    box = Inbox(free_port())
    box.start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def dash_gw(mongo, inbox, tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("dash"), mongo.uri,
                       dashboard_sections(inbox.port, login_max_failures=3,
                                          login_max_failures_ip=1000))
    yield gw
    gw.stop()


@pytest.fixture
def admin(dash_gw):
    client = Browserless(dash_gw.url)
    assert client.login(*ADMIN).status_code == 303
    yield client
    client.close()
