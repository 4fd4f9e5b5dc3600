"""Soak benchmark: accounting at line rate on the embedded database.

One gateway on the embedded default (``[database] uri = ""``, SQLite under a fresh
``data_dir``) in front of the fake upstream (32 chunks per stream, no pause), two tiers:
``metered`` (requests/tokens per minute, tokens per day and concurrent streams all set,
far above the load) and ``open`` (no limits). Printed, against the direct path (the
client talking to the upstream) in the same run:

1. limits on vs off at 1, 50 and 200 concurrent streams: requests/s and TTFT p50; on/off
   is the median (and range) of 10 paired rounds, each running both sides back to back;
2. the soak: N streamed requests (default 100,000) on the metered tier, throughput and
   database commands per request for every window of 10,000;
3. SIGTERM-to-exit time, then a restart: requests sent vs requests in the rollups.

    python -m bench.soak [--requests 100000] [--concurrency 20] [--quick] [--only-limits]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.store import embedded_db  # noqa: E402
from tests.helpers import (db_commands, db_run, free_port, start_gateway,  # noqa: E402
                           start_process, stop_process)

BODY = {"model": "fake", "stream": True,
        "messages": [{"role": "user", "content": "soak benchmark prompt"}]}
ROUNDS = 10           # paired off/on rounds per concurrency level
METERED = {"requests_per_minute": 10_000_000, "tokens_per_minute": 10**10,
           "tokens_per_day": 10**12, "concurrent_streams": 100_000}


async def one(session, url, headers) -> float:
    """One streamed request; returns its time to first content chunk."""
    start = time.perf_counter()
    ttft = None
    async with session.post(url, json=BODY, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}: {await resp.text()}")
        async for line in resp.content:
            if ttft is None and line.startswith(b"data: {"):
                ttft = time.perf_counter() - start
    return ttft


async def load(url: str, headers: dict, n: int, concurrency: int) -> dict:
    """n requests with ``concurrency`` in flight; requests/s and TTFT p50 (ms)."""
    ttfts: list[float] = []
    todo = iter(range(n))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker():
            for _ in todo:
                ttfts.append(await one(session, url, headers))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"rps": n / wall, "p50": statistics.median(ttfts) * 1000, "n": n}


async def mixed(url: str, on: dict, off: dict, n: int, concurrency: int) -> dict:
    """n requests, ``concurrency`` in flight, every other one with limits on: both kinds
    share the same queue and the same moments of the machine, so the difference of their
    TTFT medians is what admission under limits adds, without the run-to-run spread of
    separate runs. Returns the TTFT p50 (ms) per kind."""
    ttfts: dict[str, list[float]] = {"on": [], "off": []}
    todo = iter(range(n))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker():
            for i in todo:
                kind, headers = ("on", on) if i % 2 else ("off", off)
                ttfts[kind].append(await one(session, url, headers))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {k: statistics.median(v) * 1000 for k, v in ttfts.items()}


def commands(url: str) -> float:
    return sum(db_commands(url).values())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of one process, MB."""
    with open(f"/proc/{pid}/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return kb / 1024


def child_pids(pid: int) -> list[int]:
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        except (OSError, ValueError):
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--only-limits", action="store_true",
                        help="only part 1 (limits on vs off), then stop")
    ns = parser.parse_args()
    if ns.quick:
        ns.requests, ns.window = 4_000, 1_000
    per_level = {1: 2000, 50: 5000, 200: 10000} if not ns.quick else \
        {1: 500, 50: 1000, 200: 2000}

    tmp = Path(tempfile.mkdtemp(prefix="ayct-soak-"))
    port = free_port()
    upstream_proc = start_process([sys.executable, "-m", "bench.fake_upstream", "--port",
                                   str(port), "--tokens", "32", "--interval", "0"],
                                  f"http://127.0.0.1:{port}/v1/models", tmp / "upstream.log")
    upstream = f"http://127.0.0.1:{port}"
    sections = {"models": [{"name": "fake", "backend": "openai_compatible",
                            "options": {"base_url": upstream + "/v1"}}],
                "tiers": {"open": {}, "metered": METERED},
                "limits": {"default_tier": "open"},
                "server": {"log_level": "WARNING"},
                "usage": {"flush_interval": 1.0}}
    gw = start_gateway(tmp / "gw", "", sections)     # "": the embedded database
    sent = 0
    try:
        key_on = gw.create_key("soak-metered@example.com", tier="metered")
        key_off = gw.create_key("soak-open@example.com", tier="open")
        url = gw.url + "/v1/chat/completions"
        on = {"Authorization": f"Bearer {key_on}"}
        off = {"Authorization": f"Bearer {key_off}"}

        print("\n1. Limits on vs off (and the direct path), 32-chunk streams\n")
        print(f"{'streams':>8}{'direct r/s':>12}{'off r/s':>10}{'on r/s':>10}{'on/off':>8}"
              f"{'(range)':>11}{'direct p50':>12}{'off p50':>10}{'on p50':>10}{'on-off':>9}"
              f"{'off CPU/req':>12}{'on CPU/req':>11}")
        mixes = []
        for conc, n in per_level.items():
            asyncio.run(load(url, on, conc, conc))           # warm both paths up
            asyncio.run(load(url, off, conc, conc))
            d = asyncio.run(load(upstream + "/v1/chat/completions", {}, n, conc))
            # Alternate short runs and compare medians: the machine is shared, and
            # interleaving spreads any background load over both sides alike.
            # The gateway's own CPU per request is measured too: unlike the rates, it
            # hardly moves with whatever else the machine is doing.
            # Paired rounds: each round runs both sides back to back (the order swapped
            # every round), and on/off is the median of the rounds' ratios, so a slow
            # stretch of the shared machine hits both sides of a pair alike.
            runs = {"off": [], "on": []}
            ratios = []
            for i in range(ROUNDS):
                pair = {}
                for name in (("off", "on") if i % 2 == 0 else ("on", "off")):
                    cpu = cpu_seconds(gw.proc.pid)
                    r = asyncio.run(load(url, on if name == "on" else off, n // ROUNDS, conc))
                    r["cpu"] = (cpu_seconds(gw.proc.pid) - cpu) / (n // ROUNDS) * 1000
                    runs[name].append(pair.setdefault(name, r))
                ratios.append(pair["on"]["rps"] / pair["off"]["rps"])
            o, m = ({k: statistics.median(r[k] for r in runs[side]) for k in ("rps", "p50")}
                    for side in ("off", "on"))
            for side, agg in (("off", o), ("on", m)):    # CPU over all rounds, not a median
                agg["cpu"] = statistics.fmean(r["cpu"] for r in runs[side])
            sent += 2 * conc + 2 * ROUNDS * (n // ROUNDS)
            print(f"{conc:>8}{d['rps']:>12.0f}{o['rps']:>10.0f}{m['rps']:>10.0f}"
                  f"{statistics.median(ratios):>8.2f}{min(ratios):>6.2f}-{max(ratios):<5.2f}"
                  f"{d['p50']:>8.2f}ms{o['p50']:>8.2f}ms"
                  f"{m['p50']:>8.2f}ms{m['p50'] - o['p50']:>7.2f}ms"
                  f"{o['cpu']:>9.3f}ms{m['cpu']:>9.3f}ms", flush=True)
            mixes.append((conc, asyncio.run(mixed(url, on, off, n, conc))))
        print("\nThe same, both kinds mixed in one run (every other request metered):\n")
        print(f"{'streams':>8}{'off p50':>10}{'on p50':>10}{'on-off':>9}")
        for conc, mix in mixes:
            print(f"{conc:>8}{mix['off']:>8.2f}ms{mix['on']:>8.2f}ms"
                  f"{mix['on'] - mix['off']:>7.2f}ms", flush=True)
            sent += per_level[conc]

        if ns.only_limits:
            return
        print(f"\n2. Soak: {ns.requests:,} streamed requests on the metered tier, "
              f"{ns.concurrency} at a time, embedded database\n")
        print(f"{'window':>16}{'req/s':>9}{'db cmds/req':>13}{'TTFT p50':>10}"
              f"{'gateway CPU/req':>17}{'db CPU/req':>12}{'gateway RSS':>13}{'load':>6}")
        db_pid = child_pids(gw.proc.pid)[0]
        first = None
        done = 0
        while done < ns.requests:
            n = min(ns.window, ns.requests - done)
            before = commands(gw.url)
            cpu_gw, cpu_db = cpu_seconds(gw.proc.pid), cpu_seconds(db_pid)
            r = asyncio.run(load(url, on, n, ns.concurrency))
            per_req = (commands(gw.url) - before) / n
            cpu_gw = (cpu_seconds(gw.proc.pid) - cpu_gw) / n * 1000
            cpu_db = (cpu_seconds(db_pid) - cpu_db) / n * 1000
            first = first or r["rps"]
            done += n
            sent += n
            print(f"{done - n + 1:>7,}-{done:<8,}{r['rps']:>9.0f}{per_req:>13.4f}"
                  f"{r['p50']:>8.2f}ms{cpu_gw:>15.3f}ms{cpu_db:>10.3f}ms"
                  f"{rss_mb(gw.proc.pid):>11.1f}MB{os.getloadavg()[0]:>6.1f}", flush=True)
        print(f"\nlast window / first window: {r['rps'] / first:.2f} (target >= 0.85)")

        print("\n3. Shutdown and restart\n")
        time.sleep(1.5)
        start = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(120)
        print(f"SIGTERM to exit: {time.monotonic() - start:.2f} s (target < 10 s)")
        gw = start_gateway(tmp / "gw", "", sections, db_name=gw.db_name)
        port = int((gw.data_dir / "embedded-db.port").read_text())
        uri = embedded_db.local_uri(port, str(gw.data_dir / embedded_db.AUTH_FILE))
        stored = db_run(uri, gw.db_name, lambda s: s.usage.total_requests())
        counts = db_run(uri, gw.db_name, lambda s: _counts(s))
        print(f"requests sent {sent:,}; requests in the rollups after restart {stored:,}"
              f" ({'equal' if stored == sent else 'DIFFERENT'})")
        print("documents per collection: " + ", ".join(f"{k} {v}" for k, v in
                                                       sorted(counts.items())))
    finally:
        gw.stop()
        stop_process(upstream_proc)


async def _counts(store) -> dict[str, int]:
    return {n: await store.db[n].count_documents({}) for n in await store.collection_names()}


if __name__ == "__main__":
    main()
