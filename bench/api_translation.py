"""The Responses and Messages APIs against Chat Completions, in one run.

One gateway (limits off) in front of the fake upstream (bench/fake_upstream.py, 32 chunks
per stream, no pause). The same streamed request goes through ``/v1/chat/completions``,
``/v1/responses`` and ``/v1/messages`` (translated to the same pipeline), at 1 and 50
concurrent streams, the three endpoints taking turns round by round. Printed: requests per
second of each, and each translated API as a share of Chat Completions (target: >= 90%).

    python -m bench.api_translation [--rounds 5] [--requests 400]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.store import embedded_db  # noqa: E402
from tests.helpers import free_port, start_gateway, start_process, stop_process  # noqa: E402

MESSAGES = [{"role": "user", "content": "benchmark prompt"}]
ENDPOINTS = {
    "chat": ("/v1/chat/completions", {"model": "fake", "stream": True, "messages": MESSAGES}),
    "responses": ("/v1/responses", {"model": "fake", "stream": True, "input": MESSAGES}),
    "messages": ("/v1/messages", {"model": "fake", "stream": True, "max_tokens": 64,
                                  "messages": MESSAGES}),
}


async def load(url: str, body: dict, key: str, concurrency: int, total: int) -> float:
    """Streamed requests per second, ``concurrency`` at a time, ``total`` in all."""
    left = total
    headers = {"Authorization": f"Bearer {key}"}

    async def worker(session):
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url, json=body, headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"{url}: {r.status} {await r.text()}")
                async for _ in r.content.iter_any():   # bytes as they come, not
                    pass                                  # lines: the server's cost
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=400, help="per endpoint and round")
    ns = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-apis-"))
    db = embedded_db.start("memory")
    port = free_port()
    upstream = start_process([sys.executable, "-m", "bench.fake_upstream", "--port", str(port),
                              "--tokens", "32"], f"http://127.0.0.1:{port}/v1/models",
                             tmp / "upstream.log")
    gw = start_gateway(tmp / "gw", db.uri, {
        "models": [{"name": "fake", "backend": "openai_compatible",
                    "options": {"base_url": f"http://127.0.0.1:{port}/v1"}}],
        "limits": {"enabled": False}})
    try:
        key = gw.create_key()
        print(f"API translation benchmark: 32-chunk streams, limits off, {ns.rounds} rounds "
              f"of {ns.requests} requests per endpoint")
        for conc in (1, 50):
            rates = {name: [] for name in ENDPOINTS}
            for i in range(ns.rounds):
                order = list(ENDPOINTS) if i % 2 == 0 else list(reversed(ENDPOINTS))
                for name in order:
                    path, body = ENDPOINTS[name]
                    rates[name].append(asyncio.run(load(gw.url + path, body, key, conc,
                                                        ns.requests)))
            chat = statistics.median(rates["chat"])
            line = "  ".join(f"{n} {statistics.median(r):6.0f} req/s" for n, r in rates.items())
            print(f"  {conc:3d} stream(s): {line}")
            for name in ("responses", "messages"):
                share = statistics.median(rates[name]) / chat
                print(f"      {name} / chat: {100 * share:5.1f}%   (target >= 90%)")
    finally:
        gw.stop()
        stop_process(upstream)
        db.stop()


if __name__ == "__main__":
    main()
