"""Start and stop the embedded MongoDB-wire server (mongoeco) as a child process.

The gateway talks to it over TCP with the ordinary pymongo driver, exactly as it
would talk to a real mongod; only the process that serves the socket differs.
Run as a module it is the launcher itself:

    python -m gateway.store.embedded_db --engine sqlite --path var/db.sqlite --port 0

and prints ``READY <port>`` on stdout once it accepts connections.

Run for a gateway (``auth_file`` given), it is private to the service user: it listens
on loopback only, requires a user and password generated at first start and kept in
``data_dir/embedded-db.auth`` (mode 0600), and creates its files with mode 0600.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from gateway import children

EXIT_GRACE = 5.0      # after SIGTERM (or the gateway's death), exit within this long
AUTH_FILE = "embedded-db.auth"
USER = "allyoucantoken"


def credentials(auth_file: str) -> tuple[str, str]:
    """The embedded server's user and password, created (mode 0600) on first use."""
    try:
        with open(auth_file, encoding="utf-8") as fh:
            data = json.load(fh)
        return data["user"], data["password"]
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(auth_file)), mode=0o700, exist_ok=True)
    data = {"user": USER, "password": secrets.token_urlsafe(32)}
    tmp = f"{auth_file}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    try:
        os.link(tmp, auth_file)        # first writer wins when several start at once
    except FileExistsError:
        pass
    finally:
        os.remove(tmp)
    return credentials(auth_file)


def local_uri(port: int, auth_file: str | None = None) -> str:
    """The URI of an embedded server on this machine (with its credentials, if any)."""
    if auth_file and os.path.exists(auth_file):
        user, password = credentials(auth_file)
        # SCRAM-SHA-256 named: the driver would try SHA-1, which mongoeco cannot verify.
        return (f"mongodb://{user}:{password}@127.0.0.1:{port}/"
                "?directConnection=true&authSource=admin&authMechanism=SCRAM-SHA-256")
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


@dataclass
class EmbeddedDB:
    """A running embedded MongoDB-wire server child process."""

    process: subprocess.Popen
    port: int
    auth_file: str | None = None

    @property
    def uri(self) -> str:
        return local_uri(self.port, self.auth_file)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to stop (SIGTERM), then kill it if it does not."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(engine: str = "sqlite", path: str | None = None, port: int = 0,
          timeout: float = 60.0, auth_file: str | None = None) -> EmbeddedDB:
    """Start the launcher as a child process and wait until it answers. With
    ``auth_file`` the server requires the credentials kept in it."""
    args = [sys.executable, "-m", "gateway.store.embedded_db", "--engine", engine, "--port", str(port)]
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        args += ["--path", path]
    if auth_file:
        credentials(auth_file)
        args += ["--auth-file", auth_file]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env, text=True,
                            preexec_fn=children.die_with_parent)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"embedded MongoDB-wire server exited with code {proc.wait()}")
        if line.startswith("READY "):
            return EmbeddedDB(proc, int(line.split()[1]), auth_file)
    proc.kill()
    raise RuntimeError("embedded MongoDB-wire server did not start in time")


def _skip_payload_id_scan() -> None:
    """Make mongoeco's inserts O(log n) instead of O(n)
    (:func:`gateway.store.mongoeco_compat.skip_payload_id_scan`); says on stderr when this
    mongoeco does not let it (inserts then stay O(n), and still correct)."""
    from gateway.store import mongoeco_compat

    for problem in mongoeco_compat.skip_payload_id_scan():
        print(f"embedded database: inserts scan whole collections: {problem} (mongoeco "
              f"{mongoeco_compat.running_version()}; tested with "
              f"{mongoeco_compat.tested_version()})", file=sys.stderr, flush=True)


async def _serve(engine_name: str, path: str | None, port: int,
                 auth_file: str | None = None) -> None:
    from mongoeco.wire import AsyncMongoEcoProxyServer
    from mongoeco.wire.auth import WireAuthUser

    _skip_payload_id_scan()
    users = ()
    if auth_file:
        os.umask(0o077)                       # database, WAL and journal files: 0600
        for suffix in ("", "-wal", "-shm", "-journal"):
            if path and os.path.exists(path + suffix):
                os.chmod(path + suffix, 0o600)
        user, password = credentials(auth_file)
        users = (WireAuthUser(user, password, mechanisms=("SCRAM-SHA-256",)),)

    if engine_name == "memory":
        from mongoeco.engines.memory import MemoryEngine
        engine = MemoryEngine()
    else:
        from mongoeco.engines.sqlite import SQLiteEngine
        engine = SQLiteEngine(path or "var/db.sqlite")
    server = AsyncMongoEcoProxyServer(engine=engine, host="127.0.0.1", port=port,
                                      auth_users=users)
    addr = await server.start()
    bound = addr[1] if isinstance(addr, tuple) else getattr(addr, "port", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum, frame) -> None:
        # A plain handler (not the loop's): it runs even while the loop is busy, and a
        # timer makes sure the process is gone within EXIT_GRACE whatever it is doing.
        timer = threading.Timer(EXIT_GRACE, os._exit, [0])
        timer.daemon = True
        timer.start()
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    print(f"READY {bound}", flush=True)
    await children.until_stopped_or_orphaned(stop)   # or the parent went away
    try:
        await asyncio.wait_for(server.close(), EXIT_GRACE / 2)
    except TimeoutError:
        pass
    except Exception as exc:  # noqa: BLE001 - e.g. a full disk: the last commit fails
        why = "; ".join(str(e) for e in getattr(exc, "exceptions", None) or [exc])
        print(f"embedded database: closed with an error: {why}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--path", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--auth-file", default=None,
                        help="require the user/password kept in this file (made if absent)")
    ns = parser.parse_args()
    asyncio.run(_serve(ns.engine, ns.path, ns.port, ns.auth_file))


if __name__ == "__main__":
    main()
