"""Fair share of the GPUs: light subscribers' latency while heavy ones saturate the model.

A stand-in GPU server (bench/gpu_standin.py: ``--slots`` sequence slots, ``--tokens``
tokens paced ``--interval`` apart, FIFO beyond the slots, as vLLM, MLC and llama.cpp
servers queue) behind one gateway, then two gateway processes sharing it. Heavy accounts
keep ``--heavy-streams`` streams each; light accounts send one request, think
``--think`` seconds, and again. Printed, each against its target:

- light accounts' time to first token p50/p95, unloaded and saturated; saturated with
  the gateway's fair queue (``max_concurrency`` = the slots) and without it ("FIFO":
  every request goes to the server, which queues first come, first served);
- light accounts' completed requests per second, saturated vs unloaded;
- heavy accounts' tokens: max/min between them;
- a weight-2 tier against a weight-1 tier, both backlogged: the ratio of tokens;
- the server's slots busy while requests wait in the gateway;
- unsaturated time to first token with and without the queue (its cost).

    python -m bench.fairness [--seconds 15] [--quick]
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
from tests.helpers import (free_port, start_gateway, start_process,  # noqa: E402
                           stop_process)

BODY = {"model": "gpu", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def one(session, url, key) -> tuple[float, int]:
    """One streamed request: (time to first token in ms, tokens received)."""
    start = time.perf_counter()
    ttft, tokens = None, 0
    async with session.post(url, json=BODY, headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status != 200:
            await r.read()
            return float("nan"), 0
        async for line in r.content:
            if line.startswith(b"data: {") and b'"content"' in line:
                tokens += 1
                if ttft is None:
                    ttft = (time.perf_counter() - start) * 1000
    return ttft if ttft is not None else float("nan"), tokens


class Load:
    """Closed-loop clients for ``seconds``; per-account TTFTs, requests and tokens."""

    def __init__(self, urls: list[str], seconds: float) -> None:
        self.urls, self.seconds = urls, seconds
        self.ttft: dict[str, list[float]] = {}
        self.done: dict[str, int] = {}
        self.tokens: dict[str, int] = {}

    async def client(self, session, name, key, think: float, index: int) -> None:
        url = self.urls[index % len(self.urls)] + "/v1/chat/completions"
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            ttft, tokens = await one(session, url, key)
            if tokens:
                self.ttft.setdefault(name, []).append(ttft)
                self.done[name] = self.done.get(name, 0) + 1
                self.tokens[name] = self.tokens.get(name, 0) + tokens
            if think:
                await asyncio.sleep(think)

    async def run(self, accounts: list[tuple[str, str, int, float]]) -> "Load":
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=120)) as s:
            await asyncio.gather(*(self.client(s, name, key, think, i)
                                   for name, key, streams, think in accounts
                                   for i in range(streams)))
        return self


async def sample_busy(standin: str, gateways: list[str], seconds: float) -> list[float]:
    """Share of the server's slots busy, sampled while requests wait in a gateway."""
    shares = []
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < end:
            await asyncio.sleep(0.05)
            waiting = 0.0
            for gw in gateways:
                async with s.get(gw + "/metrics") as r:
                    for line in (await r.text()).splitlines():
                        if line.startswith('ayct_queue_waiting{model="gpu"'):
                            waiting += float(line.rsplit(" ", 1)[1])
            if waiting:
                async with s.get(standin + "/stats") as r:
                    stats = await r.json()
                shares.append(stats["running"] / SLOTS)
    return shares


SLOTS = 8


def main() -> None:
    global SLOTS
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--heavy", type=int, default=3)
    p.add_argument("--heavy-streams", type=int, default=16)
    p.add_argument("--light", type=int, default=5)
    p.add_argument("--think", type=float, default=0.5)
    p.add_argument("--quick", action="store_true", help="5 s phases")
    ns = p.parse_args()
    SLOTS = ns.slots
    seconds = 5.0 if ns.quick else ns.seconds
    tmp = Path(tempfile.mkdtemp(prefix="bench-fair-"))
    db = embedded_db.start("memory")
    port = free_port()
    standin = f"http://127.0.0.1:{port}"
    server = start_process([sys.executable, "-m", "bench.gpu_standin", "--port", str(port),
                            "--slots", str(ns.slots), "--tokens", str(ns.tokens),
                            "--interval", str(ns.interval)], standin + "/v1/models",
                           tmp / "standin.log")
    tiers = {"free": {}, "basic": {"weight": 1.0}, "gold": {"weight": 2.0}}
    started = []

    def gateway(name: str, concurrency: int, db_name: str):
        gw = start_gateway(tmp / name, db.uri, {
            "models": [{"name": "gpu", "backend": "openai_compatible",
                        "max_concurrency": concurrency,
                        "options": {"base_url": standin + "/v1"}}],
            "tiers": tiers, "usage": {"flush_interval": 1.0}}, db_name=db_name)
        started.append(gw)
        return gw

    try:
        fifo = gateway("fifo", 0, "fair_fifo")
        fair = gateway("fair", ns.slots, "fair_fair")
        heavy = [(f"heavy{i}", ns.heavy_streams) for i in range(ns.heavy)]
        light = [f"light{i}" for i in range(ns.light)]

        def keys(gw):
            return {name: gw.create_key(f"{name}@example.com")
                    for name in [h for h, _ in heavy] + light}
        fifo_keys, fair_keys = keys(fifo), keys(fair)
        light_only = lambda ks: [(n, ks[n], 1, ns.think) for n in light]  # noqa: E731
        everyone = lambda ks: light_only(ks) + [(n, ks[n], c, 0.0)  # noqa: E731
                                                for n, c in heavy]

        # unsaturated cost of the queue: one stream at a time, alternating gateways
        solo = {"fifo": [], "fair": []}
        for _ in range(4):
            for name, gw, ks in (("fifo", fifo, fifo_keys), ("fair", fair, fair_keys)):
                run = asyncio.run(Load([gw.url], seconds / 8).run(
                    [("solo", ks[light[0]], 1, 0.0)]))
                solo[name] += run.ttft["solo"]

        unloaded = asyncio.run(Load([fair.url], seconds).run(light_only(fair_keys)))
        saturated_fifo = asyncio.run(Load([fifo.url], seconds).run(everyone(fifo_keys)))

        async def fair_run(urls, ks):
            load = Load(urls, seconds)
            busy = asyncio.ensure_future(sample_busy(standin, urls, seconds))
            await load.run(everyone(ks))
            return load, await busy
        saturated_fair, busy = asyncio.run(fair_run([fair.url], fair_keys))

        # two gateway processes sharing the slots (one database): clients alternate
        two = [gateway("two-a", ns.slots, "fair_two"), gateway("two-b", ns.slots, "fair_two")]
        two_keys = keys(two[0])
        saturated_two, busy_two = asyncio.run(fair_run([g.url for g in two], two_keys))

        def light_line(label, load):
            ttfts = [t for n in light for t in load.ttft.get(n, [])]
            rate = sum(load.done.get(n, 0) for n in light) / seconds
            return ttfts, rate, (f"  {label:34s} light TTFT p50 {pct(ttfts, .5):8.1f} ms  "
                                 f"p95 {pct(ttfts, .95):8.1f} ms   light req/s {rate:5.2f}")

        print(f"fairness benchmark: {ns.slots} slots x {ns.tokens} tokens x "
              f"{ns.interval * 1000:g} ms; {ns.heavy} heavy x {ns.heavy_streams} streams, "
              f"{ns.light} light (think {ns.think:g} s); {seconds:g} s per phase")
        _, rate0, line = light_line("unloaded (light only)", unloaded)
        print(line)
        print(light_line("saturated, FIFO at the server", saturated_fifo)[2])
        ttfts, rate, line = light_line("saturated, fair queue (1 gateway)", saturated_fair)
        print(line)
        heavy_tokens = [saturated_fair.tokens.get(n, 0) for n, _ in heavy]
        print(f"  light TTFT p95 saturated: {pct(ttfts, .95):.0f} ms   (target <= 300 ms; "
              f"FIFO: {pct([t for n in light for t in saturated_fifo.ttft.get(n, [])], .95):.0f}"
              " ms)")
        ttfts2, rate2, line = light_line("saturated, fair queue (2 gateways)", saturated_two)
        print(line)
        print(f"  light TTFT p95 saturated, 2 gateways: {pct(ttfts2, .95):.0f} ms   "
              f"(target <= 400 ms); slots busy while requests wait "
              f"{100 * statistics.mean(busy_two) if busy_two else float('nan'):.1f}%")
        print(f"  light completed req/s saturated / unloaded: {rate / rate0:.2f}   "
              "(target 1.0)")
        print(f"  heavy accounts' tokens max/min: "
              f"{max(heavy_tokens) / max(1, min(heavy_tokens)):.3f}   (target <= 1.10)")
        print(f"  server slots busy while requests wait: "
              f"{100 * statistics.mean(busy) if busy else float('nan'):.1f}%   (target >= 95%)")

        # weight 2 against weight 1, both backlogged
        gold = fair.create_key("gold@example.com", "gold")
        basic = fair.create_key("basic@example.com", "basic")
        weights = asyncio.run(Load([fair.url], seconds).run(
            [("gold", gold, ns.heavy_streams, 0.0), ("basic", basic, ns.heavy_streams, 0.0)]))
        print(f"  weight-2 / weight-1 tokens: "
              f"{weights.tokens.get('gold', 0) / max(1, weights.tokens.get('basic', 0)):.2f}"
              "   (target 2.0 +- 0.2)")

        a, b = statistics.median(solo["fair"]), statistics.median(solo["fifo"])
        print(f"  unsaturated TTFT p50 with the queue {a:.2f} ms, without {b:.2f} ms: "
              f"{a - b:+.2f} ms   (target <= +0.1 ms; {len(solo['fair'])} requests each, "
              "alternating)")
    finally:
        for gw in started:
            gw.stop()
        stop_process(server)
        db.stop()


if __name__ == "__main__":
    main()
