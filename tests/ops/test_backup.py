"""The backup recipe of docs/deploying.md for the embedded database: an online copy of the SQLite
file, taken while the gateway serves, restored into a new data directory, brings back
the accounts, keys and usage."""
from __future__ import annotations

import sqlite3

import httpx

from gateway.store import embedded_db
from tests.helpers import db_run, start_gateway, wait_until

ECHO = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}]}
BODY = {"model": "echo", "messages": [{"role": "user", "content": "back me up"}]}


def _requests_counted(gw) -> int:
    """Requests in the daily usage rollups of this gateway's embedded database."""
    port = int((gw.data_dir / "embedded-db.port").read_text())
    uri = embedded_db.local_uri(port, str(gw.data_dir / embedded_db.AUTH_FILE))

    async def total(store):
        return sum(d.get("requests", 0) for d in await store.usage.daily.find({}).to_list())
    return db_run(uri, gw.db_name, total)


def test_an_online_copy_of_the_embedded_database_restores(tmp_path):
    live = start_gateway(tmp_path / "live", "", ECHO)        # embedded database (SQLite)
    try:
        key = live.create_key("backup@example.com")
        for _ in range(3):
            assert httpx.post(live.url + "/v1/chat/completions", json=BODY,
                              headers={"Authorization": f"Bearer {key}"}).status_code == 200
        wait_until(lambda: _requests_counted(live) == 3, 20, what="usage written")
        # The recipe: SQLite's online backup API, while the gateway keeps serving.
        restored = tmp_path / "restored" / "var"
        restored.mkdir(parents=True)
        source = sqlite3.connect(live.data_dir / "db.sqlite")
        with sqlite3.connect(restored / "db.sqlite") as copy:
            source.backup(copy)
        source.close()
        assert httpx.post(live.url + "/v1/chat/completions", json=BODY,
                          headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        live.stop()
    again = start_gateway(tmp_path / "restored", "", ECHO, db_name=live.db_name)
    try:
        assert _requests_counted(again) == 3                  # the usage at backup time
        r = httpx.post(again.url + "/v1/chat/completions", json=BODY,
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200                           # the account and its key
    finally:
        again.stop()
