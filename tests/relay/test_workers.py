"""``allyoucantoken serve --workers 2``: two processes on one port (SO_REUSEPORT) sharing
the one embedded database their parent started; limits stay exact and usage is counted
once; each worker has its own usage spool and worker 0 adopts orphaned ones."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from gateway.store import embedded_db
from gateway.runtime import spool_path
from tests.helpers import db_run, env, free_port, wait_http, wait_until, write_config
from tests.limits.conftest import wait_for_fresh_minute


class Workers:
    def __init__(self, tmp: Path, upstream: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = tmp / "var"
        self.cfg = write_config(tmp / "gw.toml", {
            "server": {"port": self.port, "data_dir": str(self.data)},
            "database": {"embedded_engine": "memory", "name": "workers"},
            "usage": {"flush_interval": 0.2},
            "models": [{"name": "gpt-relay", "backend": "openai_compatible",
                        "options": {"base_url": upstream + "/v1"}}],
            "tiers": {"rpm5": {"requests_per_minute": 5},
                      "big": {"requests_per_minute": 100000, "tokens_per_minute": 10**9}},
            "limits": {"default_tier": "big", "lease_idle": 0.4}})
        self.log = tmp / "workers.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "-c", str(self.cfg), "serve", "--workers",
             "2"], stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env())
        wait_http(self.url + "/healthz", 60, self.proc, self.log)
        wait_until(lambda: self.log.read_text().count(" worker ") >= 2, what="both workers")

    def pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout.split()
        return [int(p) for p in out if os.path.exists(f"/proc/{p}/cmdline") and
                b"gateway.cli" in Path(f"/proc/{p}/cmdline").read_bytes()]

    def db_uri(self) -> str:
        port = int((self.data / "embedded-db.port").read_text())
        return embedded_db.local_uri(port, str(self.data / embedded_db.AUTH_FILE))

    def key(self, tier: str) -> tuple[str, str]:
        email = f"{tier}-{uuid.uuid4().hex[:6]}@example.com"
        key = subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(self.cfg), "keys",
                              "create", "--account", email, "--tier", tier],
                             capture_output=True, text=True, env=env(), check=True)
        return key.stdout.strip(), email

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture(scope="module")
def workers(upstream, tmp_path_factory):
    w = Workers(tmp_path_factory.mktemp("workers"), upstream)
    yield w
    if w.proc.poll() is None:
        w.stop()


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def burst(url: str, key: str, n: int, body: dict) -> list[httpx.Response]:
    # One connection per request: the kernel spreads new connections over the workers.
    async def one():
        async with httpx.AsyncClient(timeout=60) as c:
            return await c.post(url + "/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {key}"})
    return await asyncio.gather(*(one() for _ in range(n)))


BODY = {"model": "gpt-relay", "stream": True,
        "messages": [{"role": "user", "content": "hello"}]}


def test_two_workers_share_the_port_and_the_work(workers, up):
    pids = workers.pids()
    assert len(pids) == 2
    before = {p: cpu(p) for p in pids}
    key, _ = workers.key("big")
    responses = asyncio.run(burst(workers.url, key, 120, BODY))
    assert {r.status_code for r in responses} == {200}
    used = {p: cpu(p) - before[p] for p in pids}
    total = sum(used.values())
    # Each worker did a real part of the work: shares of the CPU (counted in clock ticks),
    # not absolute seconds, which shrink as the relay gets cheaper.
    assert total > 0.03 and all(u > 0.2 * total for u in used.values()), used


def test_limits_are_exact_across_workers(workers, up):
    key, _ = workers.key("rpm5")
    wait_for_fresh_minute()
    responses = asyncio.run(burst(workers.url, key, 25, BODY))
    assert Counter(r.status_code for r in responses) == {200: 5, 429: 20}


def test_usage_is_counted_once(workers, up):
    key, email = workers.key("big")
    responses = asyncio.run(burst(workers.url, key, 40, BODY))
    assert {r.status_code for r in responses} == {200}

    def daily():
        async def go(store):
            account = await store.accounts.by_email(email)
            return await store.usage.daily_for_account(account["_id"])
        rows = db_run(workers.db_uri(), "workers", go)
        totals = Counter()
        for row in rows:
            totals.update({k: row.get(k, 0) for k in ("requests", "completion_tokens")})
        return totals if totals["requests"] >= 40 else None
    totals = wait_until(daily, 30, what="usage rollups")
    assert totals == {"requests": 40, "completion_tokens": 40 * 6}


def test_shutdown_stops_workers_and_database(workers):
    pids = workers.pids()
    db_port = int((workers.data / "embedded-db.port").read_text())
    assert workers.stop() == 0
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)
    assert not (workers.data / "embedded-db.port").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{db_port}", timeout=2)


def test_worker_zero_adopts_orphaned_spools(tmp_path):
    lines = {name: f'{{"id": "b_{name}"}}\n' for name in
             ("usage-spool.jsonl", "usage-spool-1.jsonl", "usage-spool-3.jsonl")}
    for name, line in lines.items():
        (tmp_path / name).write_text(line)
    assert spool_path(str(tmp_path), 1, 2).endswith("usage-spool-1.jsonl")   # no adoption
    own = spool_path(str(tmp_path), 0, 2)
    assert own.endswith("usage-spool-0.jsonl")
    # The single process's and the former worker 3's spools are adopted; worker 1's is its own.
    assert sorted(Path(own).read_text().splitlines(True)) == \
        sorted([lines["usage-spool.jsonl"], lines["usage-spool-3.jsonl"]])
    assert sorted(os.listdir(tmp_path)) == ["usage-spool-0.jsonl", "usage-spool-1.jsonl"]
    # A later single-process run adopts every worker's spool.
    single = spool_path(str(tmp_path), None)
    assert Path(single).read_text().count("\n") == 3
    assert os.listdir(tmp_path) == ["usage-spool.jsonl"]
