"""Fair share of the GPUs: light subscribers' latency while heavy ones saturate the model.

A stand-in GPU server (bench/gpu_standin.py: ``--slots`` sequence slots, ``--tokens``
tokens paced ``--interval`` apart, FIFO beyond the slots, as vLLM, MLC and llama.cpp
servers queue) behind one gateway, then two gateway processes sharing it. Heavy accounts
keep ``--heavy-streams`` streams each; light accounts ask at a fixed rate: each starts
one request every ``--period`` seconds (one at a time: later if the previous one has not
ended), their phases spread evenly over the period (independent users do not arrive in
step). Printed, each against its target:

- light accounts' time to first token p50/p95, unloaded and saturated; saturated with
  the gateway's fair queue (``max_concurrency`` = the slots) and without it ("FIFO":
  every request goes to the server, which queues first come, first served);
- light accounts' completed requests per second, saturated vs unloaded;
- heavy accounts' tokens, served from 2 s into the phase (once every account is
  backlogged: see ``Load.warmup``): max/min between them;
- a weight-2 tier against a weight-1 tier, both backlogged: the ratio of tokens;
- the server's slots busy while requests wait in the gateway;
- unsaturated time to first token with and without the queue (its cost).

    python -m bench.fairness [--seconds 15] [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import random
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


async def one(session, url, key, max_tokens: int | None = None,
              window: tuple[float, float] = (0.0, float("inf"))) -> tuple[float, int]:
    """One streamed request: (time to first token in ms, tokens received within
    ``window``, two ``time.monotonic()`` readings: what an account is served there)."""
    start = time.perf_counter()
    ttft, tokens = None, 0
    body = BODY if max_tokens is None else {**BODY, "max_tokens": max_tokens}
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status != 200:
            await r.read()
            return float("nan"), 0
        async for line in r.content:
            if line.startswith(b"data: {") and b'"content"' in line:
                tokens += window[0] <= time.monotonic() < window[1]
                if ttft is None:
                    ttft = (time.perf_counter() - start) * 1000
    return ttft if ttft is not None else float("nan"), tokens


async def alternate(targets: dict[str, tuple[str, str]], rounds: int) -> dict:
    """Time to first token of one stream at a time, taking turns between the targets
    (``name: (gateway url, key)``), ``rounds`` each: what the queue costs unsaturated."""
    out = {name: [] for name in targets}
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for name, (url, key) in targets.items():
                ttft, _ = await one(session, url + "/v1/chat/completions", key)
                out[name].append(ttft)
    return out


class Load:
    """Closed-loop clients for ``seconds``; per-account TTFTs, requests and tokens."""

    # a request's tokens, and how far a heavy one's length is spread around it (uniform
    # over tokens x [1 - spread, 1 + spread]: real answers differ in length, so slots do
    # not all free at once); set from the command line
    lengths = (32, 0.0)
    # tokens served are counted from this many seconds into a phase: when every stream
    # starts at once, the first accounts to ask fill the free slots before the others
    # wait (the others are then lifted to their counters: no credit for not asking), so
    # the shares are measured once all are backlogged
    warmup = 2.0

    def __init__(self, urls: list[str], seconds: float) -> None:
        self.urls, self.seconds = urls, seconds
        self.ttft: dict[str, list[float]] = {}
        self.done: dict[str, int] = {}
        self.tokens: dict[str, int] = {}

    async def client(self, session, name, key, period: float, index: int,
                     phase: float) -> None:
        url = self.urls[index % len(self.urls)] + "/v1/chat/completions"
        end = time.monotonic() + self.seconds
        begin = end - self.seconds + self.warmup
        await asyncio.sleep(phase)
        tokens, spread = self.lengths
        rng = random.Random(f"{name}/{index}")        # the same lengths in every run
        while time.monotonic() < end:
            started = time.monotonic()
            length = tokens if period or not spread else rng.randint(
                round(tokens * (1 - spread)), round(tokens * (1 + spread)))
            ttft, got = await one(session, url, key, length, (begin, end))
            if ttft == ttft:                          # (not nan: it got an answer)
                self.ttft.setdefault(name, []).append(ttft)
                self.done[name] = self.done.get(name, 0) + 1
                self.tokens[name] = self.tokens.get(name, 0) + got
            if period:
                await asyncio.sleep(max(0.0, started + period - time.monotonic()))

    async def run(self, accounts: list[tuple]) -> "Load":
        """``accounts``: (name, key, streams, period, phase=0)."""
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=120)) as s:
            await asyncio.gather(*(self.client(s, name, key, period, i, (phase or [0])[0])
                                   for name, key, streams, period, *phase in accounts
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


def one_gateway(ns, seconds, gateway, keys, light, heavy, light_only, everyone, fair_run,
                light_line) -> None:
    """The one-gateway phases: FIFO at the server against the fair queue, weights, and the
    queue's unsaturated cost."""
    fifo = gateway("fifo", 0, "fair_fifo")
    fair = gateway("fair", ns.slots, "fair_fair")
    fifo_keys, fair_keys = keys(fifo), keys(fair)

    # unsaturated cost of the queue: one stream at a time, alternating gateways
    solo = asyncio.run(alternate({"fifo": (fifo.url, fifo_keys[light[0]]),
                                  "fair": (fair.url, fair_keys[light[0]])}, ns.solo))

    unloaded = asyncio.run(Load([fair.url], seconds).run(light_only(fair_keys)))
    saturated_fifo = asyncio.run(Load([fifo.url], seconds).run(everyone(fifo_keys)))
    saturated_fair, busy = asyncio.run(fair_run([fair.url], fair_keys))

    _, rate0, line = light_line("unloaded (light only)", unloaded)
    print(line)
    print(light_line("saturated, FIFO at the server", saturated_fifo)[2])
    ttfts, rate, line = light_line("saturated, fair queue (1 gateway)", saturated_fair)
    print(line)
    heavy_tokens = [saturated_fair.tokens.get(n, 0) for n, _ in heavy]
    print(f"  light TTFT p95 saturated: {pct(ttfts, .95):.0f} ms   (target <= 300 ms; "
          f"FIFO: {pct([t for n in light for t in saturated_fifo.ttft.get(n, [])], .95):.0f}"
          " ms)")
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
          "alternating)", flush=True)


SLOTS = 8


def main() -> None:
    global SLOTS
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--spread", type=float, default=0.5,
                   help="heavy requests' lengths: uniform over tokens x [1-S, 1+S]; 0: all "
                        "alike (slots then free in step, and a light request waits for the "
                        "next step)")
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--heavy", type=int, default=3)
    p.add_argument("--heavy-streams", type=int, default=16)
    p.add_argument("--light", type=int, default=5)
    p.add_argument("--period", type=float, default=1.2,
                   help="a light account starts a request every PERIOD seconds")
    p.add_argument("--quick", action="store_true", help="5 s phases")
    p.add_argument("--solo", type=int, default=300,
                   help="unsaturated requests to each gateway, taking turns")
    p.add_argument("--two-only", action="store_true",
                   help="only the two-gateway phase (and its unloaded baseline)")
    ns = p.parse_args()
    SLOTS = ns.slots
    Load.lengths = (ns.tokens, ns.spread)
    seconds = 5.0 if ns.quick else ns.seconds
    tmp = Path(tempfile.mkdtemp(prefix="bench-fair-"))
    db = embedded_db.start("memory")
    port = free_port()
    standin = f"http://127.0.0.1:{port}"
    server = start_process([sys.executable, "-m", "bench.gpu_standin", "--port", str(port),
                            "--slots", str(ns.slots),
                            "--tokens", str(round(ns.tokens * (1 + ns.spread))),
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
        heavy = [(f"heavy{i}", ns.heavy_streams) for i in range(ns.heavy)]
        light = [f"light{i}" for i in range(ns.light)]

        def keys(gw):
            return {name: gw.create_key(f"{name}@example.com")
                    for name in [h for h, _ in heavy] + light}
        light_only = lambda ks: [(n, ks[n], 1, ns.period, i * ns.period / len(light))  # noqa: E731
                                 for i, n in enumerate(light)]
        everyone = lambda ks: light_only(ks) + [(n, ks[n], c, 0.0)  # noqa: E731
                                                for n, c in heavy]

        async def fair_run(urls, ks):
            load = Load(urls, seconds)
            busy = asyncio.ensure_future(sample_busy(standin, urls, seconds))
            await load.run(everyone(ks))
            return load, await busy

        def light_line(label, load):
            ttfts = [t for n in light for t in load.ttft.get(n, [])]
            rate = sum(load.done.get(n, 0) for n in light) / seconds
            return ttfts, rate, (f"  {label:34s} light TTFT p50 {pct(ttfts, .5):8.1f} ms  "
                                 f"p95 {pct(ttfts, .95):8.1f} ms   light req/s {rate:5.2f}")

        print(f"fairness benchmark: {ns.slots} slots x {ns.tokens} tokens "
              f"(heavy: +-{ns.spread * 100:g}%) x "
              f"{ns.interval * 1000:g} ms; {ns.heavy} heavy x {ns.heavy_streams} streams, "
              f"{ns.light} light (one request every {ns.period:g} s); {seconds:g} s per phase",
              flush=True)
        if not ns.two_only:
            one_gateway(ns, seconds, gateway, keys, light, heavy, light_only, everyone,
                        fair_run, light_line)

        # two gateway processes sharing the slots (one database): clients alternate
        two = [gateway("two-a", ns.slots, "fair_two"), gateway("two-b", ns.slots, "fair_two")]
        two_keys = keys(two[0])
        unloaded2 = asyncio.run(Load([g.url for g in two], seconds).run(light_only(two_keys)))
        _, rate0, line = light_line("unloaded, 2 gateways (light only)", unloaded2)
        print(line)
        saturated_two, busy_two = asyncio.run(fair_run([g.url for g in two], two_keys))
        ttfts2, rate2, line = light_line("saturated, fair queue (2 gateways)", saturated_two)
        print(line)
        heavy_tokens = [saturated_two.tokens.get(n, 0) for n, _ in heavy]
        print(f"  light TTFT p95 saturated, 2 gateways: {pct(ttfts2, .95):.0f} ms   "
              f"(target <= 400 ms); slots busy while requests wait "
              f"{100 * statistics.mean(busy_two) if busy_two else float('nan'):.1f}%; "
              f"light completed saturated / unloaded {rate2 / rate0:.2f}; heavy tokens "
              f"max/min {max(heavy_tokens) / max(1, min(heavy_tokens)):.3f}")
    finally:
        for gw in started:
            gw.stop()
        stop_process(server)
        db.stop()


if __name__ == "__main__":
    main()
