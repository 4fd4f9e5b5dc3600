"""With no MongoDB URI the gateway runs the embedded MongoDB-wire server (SQLite under
data_dir) as a child process, stops it on exit, and the data survives a restart."""
import os
import signal
import time
from pathlib import Path

import httpx

from tests.helpers import start_gateway

ECHO = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}],
        "database": {"uri": ""}}
BODY = {"model": "echo", "messages": [{"role": "user", "content": "still here"}]}


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_embedded_database_lifecycle_and_persistence(tmp_path):
    gw = start_gateway(tmp_path, "", ECHO)
    data_dir = tmp_path / "var"
    assert (data_dir / "db.sqlite").exists() and (data_dir / "embedded-db.port").exists()
    children = _children(gw.proc.pid)
    assert children, "the embedded database runs as a child process"
    key = gw.create_key("persist@example.com")    # the CLI finds the running database
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers).status_code == 200

    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(20) == 0
    for pid in children:
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, "embedded database outlived the gateway"
            time.sleep(0.1)
    assert not (data_dir / "embedded-db.port").exists()

    again = start_gateway(tmp_path, "", ECHO, db_name=gw.db_name)   # same SQLite file
    try:
        r = httpx.post(again.url + "/v1/chat/completions", json=BODY, headers=headers)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "still here "
    finally:
        again.stop()


def test_sigkill_of_the_gateway_leaves_no_embedded_database_running(tmp_path):
    gw = start_gateway(tmp_path, "", ECHO)
    children = _children(gw.proc.pid)
    assert children, "the embedded database runs as a child process"
    gw.kill()                                     # no handler runs: the kernel tells the child
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, "embedded database outlived a killed gateway"
        time.sleep(0.1)


def test_embedded_database_is_private_to_the_service_user(tmp_path):
    """Loopback only, files 0600 in a 0700 data_dir, and no access without the
    credentials generated at first start."""
    import stat

    from gateway.store import Store
    from tests.helpers import db_run

    gw = start_gateway(tmp_path, "", ECHO)
    try:
        data_dir = tmp_path / "var"
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for f in ("db.sqlite", "embedded-db.auth"):
            assert stat.S_IMODE((data_dir / f).stat().st_mode) == 0o600, f
        port = int((data_dir / "embedded-db.port").read_text())
        anonymous = f"mongodb://127.0.0.1:{port}/?directConnection=true"

        async def read_accounts(store):
            return await store.db["accounts"].find_one({})
        try:
            db_run(anonymous, gw.db_name, read_accounts)
            raise AssertionError("the embedded database answered without credentials")
        except Exception as exc:
            assert "auth" in str(exc).lower() or "unauthorized" in str(exc).lower(), exc
        key = gw.create_key("private@example.com")       # the CLI has the credentials
        assert key.startswith("ayct_")
        assert Store  # imported for the type of db_run's argument
    finally:
        gw.stop()
