"""Two gateway processes on one database: sessions and status changes hold across
them, and mail from the shared outbox is delivered exactly once."""
from __future__ import annotations

from tests.dashboard.conftest import ADMIN, dashboard_sections
from tests.dashboard.support import Browserless, assert_api_error, wait_until
from tests.dashboard.test_accounts import (PASSWORD, account_of, approve, chat, create_key,
                                           new_email)
from tests.helpers import start_gateway


def test_two_processes_share_sessions_status_and_outbox(mongo, inbox, tmp_path):
    sections = dashboard_sections(inbox.port)
    a = start_gateway(tmp_path / "a", mongo.uri, sections)
    b = start_gateway(tmp_path / "b", mongo.uri, sections, db_name=a.db_name)
    try:
        admin_b = Browserless(b.url)
        assert admin_b.login(*ADMIN).status_code == 303
        users = [new_email() for _ in range(4)]
        for i, email_addr in enumerate(users):
            gw = (a, b)[i % 2]
            assert Browserless(gw.url).register(email_addr, PASSWORD).status_code == 200
        for email_addr in users:
            inbox.wait_for(email_addr, "registration")
        user = users[0]
        assert approve(admin_b, b, user).status_code == 303
        client = Browserless(a.url)
        assert client.login(user, PASSWORD).status_code == 303
        key = create_key(client)
        # the session made on A is valid on B
        same_session = Browserless(b.url, cookies=dict(client.cookies))
        assert same_session.get("/dashboard").status_code == 200
        assert chat(b, key).status_code == 200
        # suspended through B: refused on A within the key cache bound, sessions ended
        assert approve(admin_b, b, user, "suspend").status_code == 303
        wait_until(lambda: chat(a, key).status_code == 403, timeout=10)
        assert_api_error(client.get("/dashboard"), 401)
        inbox.wait_for(user, "suspended")
        # every message went out exactly once, although both processes send mail
        for email_addr in users:
            assert len(inbox.to(email_addr, "registration")) == 1
        assert len(inbox.to(user, "approved")) == 1
        assert account_of(a, user)["status"] == "suspended"
    finally:
        a.stop()
        b.stop()
