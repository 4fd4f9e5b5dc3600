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


def dash_sections(smtp_port: int) -> dict:
    """The config of ``dash_gw``."""
    return dashboard_sections(smtp_port, login_max_failures=3, login_max_failures_ip=1000)


@pytest.fixture(scope="module")
def dash_gw(mongo, inbox, tmp_path_factory):
    """A gateway process with the dashboard (a module may override it with the
    in-process one: ``start_inprocess(..., dash_sections(inbox.port))``)."""
    gw = start_gateway(tmp_path_factory.mktemp("dash"), mongo.uri, dash_sections(inbox.port))
    yield gw
    gw.stop()


@pytest.fixture
def admin(dash_gw):
    client = Browserless(dash_gw.url)
    assert client.login(*ADMIN).status_code == 303
    yield client
    client.close()
