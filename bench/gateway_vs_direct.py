"""Benchmark: the gateway against the direct path, in one run.

A fake OpenAI-compatible upstream (bench/fake_upstream.py: fixed token rate, fixed
chunk size) is measured twice: clients talking to it directly, and clients talking
to it through a gateway process (openai_compatible backend, embedded MongoDB-wire
server). Reported: time to first token p50/p99 at 1, 50 and 200 concurrent streams,
relayed chunks per second at saturation, and the cost of admission with tier limits
on versus off.

    python -m bench.gateway_vs_direct [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import (db_commands, free_port, start_gateway,  # noqa: E402
                           start_process, stop_process)
from gateway import embedded_db  # noqa: E402

BODY = {"model": "fake", "stream": True,
        "messages": [{"role": "user", "content": "benchmark prompt"}]}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def one_stream(session, url, headers, body) -> tuple[float, int]:
    """Returns (time to first content chunk, chunks received)."""
    start = time.perf_counter()
    ttft, chunks = None, 0
    async with session.post(url, json=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}: {await resp.text()}")
        async for line in resp.content:
            if line.startswith(b"data: {"):
                if ttft is None:
                    ttft = time.perf_counter() - start
                chunks += 1
    return ttft, chunks


async def run_load(url: str, headers: dict, concurrency: int, rounds: int,
                   body: dict) -> dict:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await one_stream(session, url, headers, body)   # warm up the connection pools
        ttfts, chunks = [], 0
        start = time.perf_counter()
        for _ in range(rounds):
            results = await asyncio.gather(*(one_stream(session, url, headers, body)
                                              for _ in range(concurrency)))
            ttfts += [r[0] for r in results]
            chunks += sum(r[1] for r in results)
        wall = time.perf_counter() - start
    return {"p50": pct(ttfts, 50) * 1000, "p99": pct(ttfts, 99) * 1000,
            "chunks_per_s": chunks / wall, "n": len(ttfts)}


def round_trips(gw, via_on, n: int) -> dict[str, float]:
    """MongoDB commands per request with limits on, n sequential requests (steady state,
    including the amortised usage writes)."""
    import time as _time
    asyncio.run(run_load(*via_on, 1, 5, BODY))
    _time.sleep(1.5)                      # let the usage writer flush the warm-up
    before = db_commands(gw.url)
    asyncio.run(run_load(*via_on, 1, n, BODY))
    _time.sleep(1.5)
    after = db_commands(gw.url)
    return {k: (after.get(k, 0) - before.get(k, 0)) / (n + 1) for k in after
            if after.get(k, 0) - before.get(k, 0) > 0}


def set_upstream(upstream: str, **settings) -> None:
    import httpx
    httpx.post(upstream + "/settings", json=settings, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    ns = parser.parse_args()
    rounds = {1: 5 if ns.quick else 200, 50: 2 if ns.quick else 10, 200: 1 if ns.quick else 3}
    tmp = Path(tempfile.mkdtemp(prefix="ayct-bench-"))
    port = free_port()
    upstream_proc = start_process([sys.executable, "-m", "bench.fake_upstream", "--port",
                                   str(port)], f"http://127.0.0.1:{port}/v1/models",
                                  tmp / "upstream.log")
    upstream = f"http://127.0.0.1:{port}"
    db = embedded_db.start("memory")
    model = {"name": "fake", "backend": "openai_compatible",
             "options": {"base_url": upstream + "/v1"}}
    tiers = {"off": {}, "on": {"requests_per_minute": 1_000_000, "tokens_per_minute": 10**9,
                               "tokens_per_day": 10**10, "concurrent_streams": 10_000}}
    gw = start_gateway(tmp / "gw", db.uri, {"models": [model], "tiers": tiers,
                                            "limits": {"default_tier": "off"},
                                            "server": {"log_level": "WARNING"},
                                            "usage": {"flush_interval": 1.0}})
    try:
        key_off = gw.create_key("bench-off@example.com", tier="off")
        key_on = gw.create_key("bench-on@example.com", tier="on")
        direct = (upstream + "/v1/chat/completions", {})
        via = (gw.url + "/v1/chat/completions", {"Authorization": f"Bearer {key_off}"})
        via_on = (gw.url + "/v1/chat/completions", {"Authorization": f"Bearer {key_on}"})
        rows = []
        # TTFT: 16 chunks of 4 chars, 5 ms apart (a realistic-ish decode rate).
        set_upstream(upstream, tokens=16, interval=0.005, chunk_chars=4)
        # The floor for any extra Python hop: a bare asyncio byte relay, one stream.
        relay_port = free_port()
        relay_proc = start_process([sys.executable, "-m", "bench.tcp_relay", "--port",
                                    str(relay_port), "--upstream-port", str(port)],
                                   f"http://127.0.0.1:{relay_port}/v1/models",
                                   tmp / "relay.log")
        d = asyncio.run(run_load(*direct, 1, rounds[1], BODY))
        r = asyncio.run(run_load(f"http://127.0.0.1:{relay_port}/v1/chat/completions", {}, 1,
                                 rounds[1], BODY))
        stop_process(relay_proc)
        relay_row = ("bare TCP relay @   1", d, r)
        for conc in (1, 50, 200):
            d = asyncio.run(run_load(*direct, conc, rounds[conc], BODY))
            g = asyncio.run(run_load(*via, conc, rounds[conc], BODY))
            rows.append((f"TTFT @ {conc:>3} streams", d, g))
        # Saturation: 200 streams of 256 chunks, no pause between chunks.
        set_upstream(upstream, tokens=256, interval=0.0, chunk_chars=4)
        sat_direct = asyncio.run(run_load(*direct, 200, 1, BODY))
        sat_gateway = asyncio.run(run_load(*via, 200, 1, BODY))
        # Admission cost: limits on vs off, one stream at a time and 50 at a time.
        set_upstream(upstream, tokens=4, interval=0.0, chunk_chars=4)
        adm = []
        for conc, n in ((1, rounds[1]), (50, rounds[50])):
            off = asyncio.run(run_load(*via, conc, n, BODY))
            on = asyncio.run(run_load(*via_on, conc, n, BODY))
            adm.append((conc, off, on))
        trips = round_trips(gw, via_on, 100 if ns.quick else 300)
    finally:
        gw.stop()
        stop_process(upstream_proc)
        db.stop()

    print("\nGateway vs direct (fake upstream on loopback, 2 cores shared by client, "
          "gateway, upstream and database)\n")
    print(f"{'measure':<24}{'direct p50':>12}{'gateway p50':>13}{'added p50':>11}"
          f"{'direct p99':>12}{'gateway p99':>13}")
    for name, d, g in rows + [relay_row]:
        print(f"{name:<24}{d['p50']:>10.2f}ms{g['p50']:>11.2f}ms{g['p50'] - d['p50']:>9.2f}ms"
              f"{d['p99']:>10.2f}ms{g['p99']:>11.2f}ms")
    print(f"\n{'saturation (200 streams x 256 chunks)':<40}{'direct':>12}{'gateway':>12}")
    print(f"{'relayed chunks/s':<40}{sat_direct['chunks_per_s']:>12.0f}"
          f"{sat_gateway['chunks_per_s']:>12.0f}")
    print(f"\n{'admission (limits on vs off)':<32}{'off p50':>10}{'on p50':>10}{'added':>10}")
    for conc, off, on in adm:
        print(f"{'TTFT @ ' + str(conc) + ' streams':<32}{off['p50']:>8.2f}ms{on['p50']:>8.2f}ms"
              f"{on['p50'] - off['p50']:>8.2f}ms")
    print("\nMongoDB round trips per request, limits on (steady state, usage writes amortised):")
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(trips.items())) +
          f"  = {sum(trips.values()):.2f} in all")


if __name__ == "__main__":
    main()
