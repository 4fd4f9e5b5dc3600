"""Test helpers: real processes (gateway, upstreams) on free loopback ports."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
EVENTS_FILE = "usage-events.jsonl"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now and was not handed out before in this test run.
    Tests reserve ports up front and bind them later (a module's upstream replicas), so
    the kernel may offer a reserved port again meanwhile: once it was another gateway's
    port, and a replica's requests reached that gateway."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(fn, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``fn`` until it returns something truthy, and return that (tests assert
    behaviour, not timing: the timeout is only a safety net)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text() if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{text[-3000:]}")
        try:
            httpx.get(url, timeout=1.0, verify=False)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("ALLYOUCANTOKEN_CONFIG", None)
    return e


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def write_config(path: Path, sections: dict) -> Path:
    """Write a TOML config from {section: {key: value}}; 'models' is a list of tables."""
    lines = []
    for section, values in sections.items():
        if section == "models":
            for m in values:
                lines.append("[[models]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in m.items()]
            continue
        if section == "tiers":
            for name, t in values.items():
                lines.append(f"[tiers.{name}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in t.items()]
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_usage_events(data_dir: Path | None) -> list[dict]:
    """A test gateway's per-request usage log (``events_file`` in its data folder)."""
    import json
    path = data_dir / EVENTS_FILE if data_dir else None
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cli(config_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``allyoucantoken -c CONFIG ARGS...`` as a process."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(config_path), *args],
                          capture_output=True, text=True, env=env(), check=check, timeout=60)


@dataclass
class GatewayProcess:
    """A real gateway process started by the tests (``allyoucantoken serve``)."""

    url: str
    proc: subprocess.Popen
    log_path: Path
    config_path: Path
    db_uri: str
    db_name: str
    data_dir: Path | None = None
    extra: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def usage_events(self) -> list[dict]:
        """The per-request usage log (the opt-in ``events_file`` observer, on in tests)."""
        return read_usage_events(self.data_dir)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(self.config_path, *args, check=check)

    def create_key(self, account: str | None = None, tier: str | None = None) -> str:
        """A new key (and account), as ``keys create`` makes it, written through the store
        (a CLI process per key cost a second; tests/test_keys.py runs the CLI itself).
        With the embedded database (no URI) the CLI makes it: it finds the database and
        its credentials, which the embedded-database tests check."""
        if not self.db_uri:
            args = ["keys", "create", "--account",
                    account or f"{uuid.uuid4().hex[:8]}@example.com"]
            return self.cli(*args, *(["--tier", tier] if tier else [])).stdout.strip()
        from gateway import config as config_mod
        default_tier = config_mod.load(str(self.config_path), env()).limits.default_tier
        return db_run(self.db_uri, self.db_name,
                      lambda store: create_key(store, account, tier or default_tier))


@dataclass
class GatewaySetup:
    """What a test gateway is started from: its config file (written like a user's),
    port, URL, database and data folder. Shared by the subprocess gateway
    (``start_gateway``) and the in-process one (``tests.inprocess``)."""

    config_path: Path
    port: int
    url: str
    db_uri: str
    db_name: str
    data_dir: Path


def gateway_setup(tmp: Path, db_uri: str, sections: dict | None = None,
                  db_name: str | None = None) -> GatewaySetup:
    """Write the config of a test gateway on a free loopback port: ``sections`` plus the
    database, a data folder under ``tmp`` and a fast usage flush with the per-request
    usage log (``events_file``)."""
    sections = {k: dict(v) if isinstance(v, dict) else v for k, v in (sections or {}).items()}
    port = free_port()
    db_name = db_name or "t_" + uuid.uuid4().hex[:10]
    server = {"host": "127.0.0.1", "port": port, "data_dir": str(tmp / "var"), **sections.get("server", {})}
    sections["server"] = server
    sections["database"] = {"uri": db_uri, "name": db_name, **sections.get("database", {})}
    sections.setdefault("usage", {"flush_interval": 0.2, "events_file": EVENTS_FILE})
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = write_config(tmp / f"gateway-{port}.toml", sections)
    scheme = "https" if server.get("tls_cert") else "http"
    return GatewaySetup(cfg, port, f"{scheme}://127.0.0.1:{port}", db_uri, db_name,
                        Path(server["data_dir"]))


def start_gateway(tmp: Path, db_uri: str, sections: dict | None = None,
                  db_name: str | None = None, timeout: float = 60.0,
                  serve_args: tuple[str, ...] = ()) -> GatewayProcess:
    """A gateway process (``allyoucantoken serve``). Use it where the process matters
    (several processes, signals, SIGKILL, the process log, ``--workers``); handler-level
    tests are faster with the in-process gateway of ``tests.inprocess``."""
    setup = gateway_setup(tmp, db_uri, sections, db_name)
    log_path = tmp / f"gateway-{setup.port}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "-c", str(setup.config_path),
                             "serve", *serve_args],
                            stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=str(tmp))
    wait_http(setup.url + "/healthz", timeout, proc, log_path)
    return GatewayProcess(setup.url, proc, log_path, setup.config_path, db_uri, setup.db_name,
                          setup.data_dir)


def start_process(args: list[str], ready_url: str, log_path: Path,
                  timeout: float = 60.0) -> subprocess.Popen:
    log = open(log_path, "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env(),
                            start_new_session=True)
    wait_http(ready_url, timeout, proc, log_path)
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def create_key(store, account: str | None, tier: str, name: str = "") -> str:
    """What ``allyoucantoken keys create --account ACCOUNT --tier TIER`` does: the account
    (created if needed, in ``tier``; it must be active) and a new key, returned in clear."""
    email = account or f"{uuid.uuid4().hex[:8]}@example.com"
    acc = await store.accounts.ensure(email, tier=tier)
    assert acc["status"] == "active", f"account {email} is {acc['status']}"
    return (await store.keys.create(acc["_id"], name))[0]


def db_run(uri: str, db_name: str, fn):
    """Run ``await fn(store)`` against the test database with the gateway's own Store."""
    from gateway.store import Store

    async def go():
        store = Store(uri, db_name)
        try:
            return await fn(store)
        finally:
            await store.close()
    return asyncio.run(go())


def db_commands(gateway_url: str) -> dict[str, float]:
    """MongoDB commands this gateway process has sent (``ayct_db_commands_total``), by
    command name."""
    out = {}
    for line in httpx.get(gateway_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("ayct_db_commands_total{"):
            name = line.split('command="', 1)[1].split('"', 1)[0]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def sse_events(response: httpx.Response) -> list:
    """Parse an SSE response body into a list of JSON payloads (and '[DONE]')."""
    import json
    out = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
