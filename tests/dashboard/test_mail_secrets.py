"""A reset code is never stored readable: while the mail waits out an SMTP outage (and a
gateway restart) no document in any collection holds the code in clear, the body is
erased once sent, the key that seals queued mail is private to the service user, and
the mail still reaches a real SMTP server with a code that works."""
from __future__ import annotations

import json
import os
import re
import stat

from tests.dashboard.conftest import dashboard_sections
from tests.dashboard.support import Browserless, Inbox, wait_until
from tests.dashboard.test_accounts import new_email
from tests.helpers import db_run, free_port, start_gateway


async def _everything(store):
    return {n: await store.dump_collection(n) for n in await store.collection_names()}


def everything(gw) -> str:
    return json.dumps(db_run(gw.db_uri, gw.db_name, _everything), default=str)


def outbox(gw, **query):
    return db_run(gw.db_uri, gw.db_name, lambda s: s.outbox.find(**query))


def test_reset_code_is_never_stored_in_clear_and_survives_an_outage(mongo, tmp_path):
    box = Inbox(free_port())                       # the relay is down from the start
    sections = dashboard_sections(box.port)
    sections["server"] = {"log_level": "DEBUG"}
    gw = start_gateway(tmp_path, mongo.uri, sections)
    email = new_email()
    try:
        db_run(gw.db_uri, gw.db_name,
               lambda s: s.accounts.create(email, tier="free", status="active"))
        assert Browserless(gw.url).submit("/dashboard/forgot",
                                          {"email": email}).status_code == 200
        waiting = wait_until(lambda: [m for m in outbox(gw, to=email)
                                      if m["attempts"] >= 1 and m["last_error"]])
        assert waiting[0]["status"] == "pending" and waiting[0]["body"]
        during_outage = everything(gw)

        # A restart during the outage keeps the message, and the key to open it.
        gw.stop()
        gw = start_gateway(tmp_path, mongo.uri, sections, db_name=gw.db_name)
        box.start()                                # the relay is back
        body = box.wait_for(email, "reset").get_content()
        code = re.search(r"enter this code:\s+(\S+)", body).group(1)
        sent = wait_until(lambda: [m for m in outbox(gw, to=email) if m["status"] == "sent"])
        assert sent[0]["body"] == ""               # erased once delivered
        assert len(box.to(email)) == 1
        for name, text in {"database during the outage": during_outage,
                           "database after delivery": everything(gw),
                           "log": gw.log()}.items():
            assert code not in text, f"the reset code is readable in the {name}"
        # ...and it is the real code.
        done = Browserless(gw.url).submit("/dashboard/reset", {
            "token": code, "password": "a brand new passphrase"})
        assert done.status_code == 200 and "Password changed" in done.text
    finally:
        gw.stop()
        box.stop()

    data_dir = tmp_path / "var"
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    key = data_dir / "mail.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert key.read_bytes().strip() not in during_outage.encode()
