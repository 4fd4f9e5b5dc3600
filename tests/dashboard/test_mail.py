"""Email through a real SMTP server (aiosmtpd): the outbox keeps mail through an SMTP
outage and delivers it when the server is back; bad [smtp] config fails at start."""
from __future__ import annotations

import pytest

from tests.dashboard.conftest import dashboard_sections
from tests.dashboard.support import Browserless, Inbox, wait_until
from tests.dashboard.test_accounts import PASSWORD, new_email
from tests.helpers import db_run, free_port, start_gateway
from tests.inprocess import start_inprocess


def outbox(gw, **query):
    return db_run(gw.db_uri, gw.db_name, lambda s: s.outbox.find(**query))


def test_mail_survives_an_smtp_outage(mongo, tmp_path):
    box = Inbox(free_port())
    box.start()
    gw = start_inprocess(tmp_path, mongo.uri, dashboard_sections(box.port))
    try:
        first = new_email()
        Browserless(gw.url).register(first, PASSWORD)
        box.wait_for(first, "registration")                  # the relay works
        box.stop()                                           # outage
        second = new_email()
        assert Browserless(gw.url).register(second, PASSWORD).status_code == 200
        failed = wait_until(lambda: [m for m in outbox(gw, to=second)
                                     if m["attempts"] >= 2 and m["last_error"]])
        assert failed[0]["status"] == "pending"              # kept, to be retried
        assert not box.to(second)
        box.start()                                          # the relay is back
        msg = box.wait_for(second, "registration")
        assert "waiting for approval" in msg.get_content()
        assert msg["From"] == "AllYouCanToken <no-reply@example.com>"
        sent = wait_until(lambda: [m for m in outbox(gw, to=second) if m["status"] == "sent"])
        assert sent[0]["body"] == ""                         # the text is not kept once sent
        assert len(box.to(second)) == 1                      # delivered once
    finally:
        gw.stop()
        box.stop()


@pytest.mark.parametrize("smtp,message", [
    ({"port": 70000}, "smtp.port"),
    ({"sender": "nobody"}, "smtp.sender"),
    ({"tls": True, "starttls": True}, "not both"),
    ({"username": "u"}, "username and password"),
    ({"hots": "x"}, "unknown key(s) hots"),
])
def test_bad_smtp_config_fails_at_start_with_a_clear_message(mongo, tmp_path, smtp, message):
    sections = dashboard_sections(25)
    sections["smtp"] = {"host": "127.0.0.1", **smtp}
    with pytest.raises(RuntimeError) as info:
        start_gateway(tmp_path, mongo.uri, sections, timeout=30)
    assert "configuration error: " in str(info.value) and message in str(info.value)
    assert "Traceback" not in str(info.value)
