"""Start and stop the embedded MongoDB-wire server (mongoeco) as a child process.

The gateway talks to it over TCP with the ordinary pymongo driver, exactly as it
would talk to a real mongod; only the process that serves the socket differs.
Run as a module it is the launcher itself:

    python -m gateway.embedded_db --engine sqlite --path var/db.sqlite --port 0

and prints ``READY <port>`` on stdout once it accepts connections.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class EmbeddedDB:
    """A running embedded MongoDB-wire server child process."""

    process: subprocess.Popen
    port: int

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

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
          timeout: float = 60.0) -> EmbeddedDB:
    """Start the launcher as a child process and wait until it answers."""
    args = [sys.executable, "-m", "gateway.embedded_db", "--engine", engine, "--port", str(port)]
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        args += ["--path", path]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"embedded MongoDB-wire server exited with code {proc.wait()}")
        if line.startswith("READY "):
            return EmbeddedDB(proc, int(line.split()[1]))
    proc.kill()
    raise RuntimeError("embedded MongoDB-wire server did not start in time")


async def _serve(engine_name: str, path: str | None, port: int) -> None:
    from mongoeco.wire import AsyncMongoEcoProxyServer

    if engine_name == "memory":
        from mongoeco.engines.memory import MemoryEngine
        engine = MemoryEngine()
    else:
        from mongoeco.engines.sqlite import SQLiteEngine
        engine = SQLiteEngine(path or "var/db.sqlite")
    server = AsyncMongoEcoProxyServer(engine=engine, host="127.0.0.1", port=port)
    addr = await server.start()
    bound = addr[1] if isinstance(addr, tuple) else getattr(addr, "port", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {bound}", flush=True)
    # Exit when the parent goes away, too (stdin closes or the ppid changes).
    parent = os.getppid()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            if os.getppid() != parent:
                break
    await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--path", default=None)
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args()
    asyncio.run(_serve(ns.engine, ns.path, ns.port))


if __name__ == "__main__":
    main()
