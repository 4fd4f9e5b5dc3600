"""The first admin: created at first start from config (or env), or with a one-time
random password printed to the console; and `allyoucantoken admin create`."""
from __future__ import annotations

import re
import stat
import subprocess
import sys

from tests.dashboard.conftest import dashboard_sections
from tests.dashboard.support import Browserless, wait_until
from tests.helpers import db_run, env, start_gateway


def admins(gw):
    async def go(store):
        return [a for a in await store.dump_collection("accounts") if "admin" in a["roles"]]
    return db_run(gw.db_uri, gw.db_name, go)


def test_random_one_time_password_goes_to_a_file_never_to_the_log(mongo, inbox, tmp_path):
    """Issue 22, security 9: the one-time password was printed to the console twice
    (anything that ships logs shipped it). It is in data_dir/first-admin-password, mode
    0600, deleted once it is changed; the log shows only the path."""
    sections = dashboard_sections(inbox.port)
    del sections["dashboard"]["admin_email"], sections["dashboard"]["admin_password"]
    gw = start_gateway(tmp_path / "a", mongo.uri, sections)
    path = gw.data_dir / "first-admin-password"
    try:
        line = wait_until(lambda: re.search(r"created the first admin account (\S+); its "
                                            r"one-time password is in (\S+) ", gw.log()))
        email_addr, shown = line.groups()
        assert email_addr == "admin@localhost" and shown == str(path.resolve())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        password = path.read_text().strip()
        assert len(password) >= 16
        wait_until(lambda: "(repeated) created the first admin" in gw.log())  # after start-up
        log = gw.log()
        assert log.rindex(str(path.resolve())) > log.index("listening on")
        assert password not in log and "one-time password:" not in log
        client = Browserless(gw.url)
        assert client.login(email_addr, password).status_code == 303
        assert client.get("/dashboard/admin").status_code == 200
        # a wrong current password changes nothing; the change deletes the file
        new = "a-new-admin-password-77"
        assert client.submit("/dashboard/account/password", {
            "current_password": "wrong-password-00", "new_password": new},
            form_page="/dashboard/account").status_code == 400
        assert path.exists()
        assert client.submit("/dashboard/account/password", {
            "current_password": password, "new_password": new},
            form_page="/dashboard/account").status_code == 303
        assert not path.exists()
        assert Browserless(gw.url).login(email_addr, new).status_code == 303
        assert password not in gw.log() and new not in gw.log()
    finally:
        gw.stop()
    # the next start creates nothing; a stale file (its password no longer works) goes
    path.write_text(password + "\n")
    again = start_gateway(tmp_path / "b", mongo.uri, {
        **sections, "server": {"data_dir": str(gw.data_dir)}}, db_name=gw.db_name)
    try:
        assert "one-time password" not in again.log()
        assert len(admins(again)) == 1
        wait_until(lambda: not path.exists())
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
