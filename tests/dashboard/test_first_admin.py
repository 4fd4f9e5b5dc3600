"""The first admin: created at first start from config (or env), or with a one-time
random password printed to the console; and `allyoucantoken admin create`."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.dashboard.conftest import dashboard_sections
from tests.dashboard.support import Browserless, wait_until
from tests.helpers import db_run, env, start_gateway


def admins(gw):
    async def go(store):
        return [a for a in await store.dump_collection("accounts") if "admin" in a["roles"]]
    return db_run(gw.db_uri, gw.db_name, go)


def test_random_one_time_password_printed_once(mongo, inbox, tmp_path):
    sections = dashboard_sections(inbox.port)
    del sections["dashboard"]["admin_email"], sections["dashboard"]["admin_password"]
    gw = start_gateway(tmp_path / "a", mongo.uri, sections)
    try:
        match = wait_until(lambda: re.search(r"First admin: (\S+)\s+one-time password: (\S+)",
                                             gw.log()))
        email_addr, password = match.groups()
        assert email_addr == "admin@localhost"
        wait_until(lambda: "(repeated from above)" in gw.log())   # shown again after start-up
        log = gw.log()
        assert log.rindex(password) > log.index("listening on")    # ...so it does not scroll past
        client = Browserless(gw.url)
        assert client.login(email_addr, password).status_code == 303
        assert client.get("/dashboard/admin").status_code == 200
    finally:
        gw.stop()
    again = start_gateway(tmp_path / "b", mongo.uri, sections, db_name=gw.db_name)
    try:
        assert "one-time password" not in again.log()
        assert len(admins(again)) == 1
    finally:
        again.stop()


def test_admin_from_config_and_environment(mongo, inbox, tmp_path, monkeypatch):
    secret = "from-the-environment-42"
    monkeypatch.setenv("ALLYOUCANTOKEN_DASHBOARD__ADMIN_PASSWORD", secret)
    sections = dashboard_sections(inbox.port, admin_email="boss@example.com")
    del sections["dashboard"]["admin_password"]
    gw = start_gateway(tmp_path, mongo.uri, sections)
    try:
        assert Browserless(gw.url).login("boss@example.com", secret).status_code == 303
        assert "one-time password" not in gw.log() and secret not in gw.log()
        stored = admins(gw)
        assert [a["email"] for a in stored] == ["boss@example.com"]
        assert stored[0]["password_hash"].startswith("$argon2id$")
        # the CLI: create another admin with a random password, or one read from stdin
        out = gw.cli("admin", "create", "--email", "ops@example.com")
        password = out.stdout.strip()
        assert len(password) >= 16
        assert Browserless(gw.url).login("ops@example.com", password).status_code == 303
        weak = subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(gw.config_path),
                               "admin", "create", "--email", "x@example.com",
                               "--password-stdin"], input="short\n", capture_output=True,
                              text=True, env=env(), timeout=60)
        assert weak.returncode != 0 and "at least 10 characters" in weak.stderr
        assert sorted(a["email"] for a in admins(gw)) == ["boss@example.com",
                                                          "ops@example.com"]
    finally:
        gw.stop()
