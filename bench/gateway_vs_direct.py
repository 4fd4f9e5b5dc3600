"""Benchmark: the gateway against the direct path, in one run.

A fake OpenAI-compatible upstream (bench/fake_upstream.py: fixed token rate, fixed
chunk size) is measured twice: clients talking to it directly, and clients talking
to it through a gateway process (openai_compatible backend, embedded MongoDB-wire
server). Reported: time to first token p50/p99 at 1, 50 and 200 concurrent streams,
relayed chunks per second at saturation, and the cost of admission with tier limits
on versus off; then, against the targets of the relay issue, for 32-chunk streams with
limits off: requests per second and time-to-first-token overhead at 1 and 50 streams
(``--workers`` 1 and N), the gateway's CPU per request and per relayed chunk, and its
memory per open stream with 1,000 streams open at once.

    python -m bench.gateway_vs_direct [--quick] [--workers 2] [--only-targets]
                                      [--client-cpu 1]

``--client-cpu N`` keeps the client on core N and every other process off it, as a
client on another machine would be (with two cores, the gateway, the upstream and the
database then share the other one: a pessimistic figure for requests per second).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import (db_commands, free_port, start_gateway,  # noqa: E402
                           start_process, stop_process)
from gateway.store import embedded_db  # noqa: E402

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
            "chunks_per_s": chunks / wall, "n": len(ttfts), "req_per_s": len(ttfts) / wall,
            "chunks": chunks}


def tree_pids(pid: int) -> list[int]:
    """A process and its children (the workers of ``serve --workers``)."""
    import subprocess
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout.split()
    return [pid] + [int(p) for p in out]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


async def open_streams(url: str, headers: dict, n: int, pids: list[int]) -> tuple[int, int]:
    """Open ``n`` streams that stay open (the upstream pauses after its first chunk);
    returns the gateway's RSS in KB with 10 and with ``n`` streams open."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:
        started = 0
        gate = asyncio.Event()

        async def hold():
            nonlocal started
            async with session.post(url, json=BODY, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        break
                started += 1
                await gate.wait()
        first = [asyncio.ensure_future(hold()) for _ in range(10)]
        while started < 10:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        base = rss_kb(pids)
        rest = [asyncio.ensure_future(hold()) for _ in range(n - 10)]
        deadline = time.monotonic() + 120
        while started < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if started < n:
            raise RuntimeError(f"only {started} of {n} streams opened")
        await asyncio.sleep(1.0)
        full = rss_kb(pids)
        gate.set()
        for t in first + rest:
            t.cancel()
        await asyncio.gather(*first, *rest, return_exceptions=True)
    return base, full


def pin_away(pids: list[int], client_cpu: int | None) -> None:
    """With ``--client-cpu``, keep these processes off the client's core (as if the
    client ran on another machine); no-op otherwise."""
    if client_cpu is None:
        return
    others = set(range(os.cpu_count() or 1)) - {client_cpu}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):   # every thread of the process
            try:
                os.sched_setaffinity(int(task.name), others)
            except ProcessLookupError:
                pass


def alternate(direct, via, conc: int, rounds: int, pids: list[int], reps: int = 3) -> dict:
    """Direct and gateway runs taken in turn (``reps`` each), so a machine whose load
    changes during the run affects both alike; medians, and the gateway's CPU summed
    over its runs."""
    import statistics
    ds, gs, cpu, chunks, n = [], [], 0.0, 0, 0
    for _ in range(reps):
        ds.append(asyncio.run(run_load(*direct, conc, rounds, BODY)))
        before = cpu_seconds(pids)
        g = asyncio.run(run_load(*via, conc, rounds, BODY))
        cpu += cpu_seconds(pids) - before
        chunks, n = chunks + g["chunks"], n + g["n"] + 1
        gs.append(g)

    def med(runs, key):
        return statistics.median(r[key] for r in runs)
    return {"d_rate": med(ds, "req_per_s"), "g_rate": med(gs, "req_per_s"),
            "d_p50": med(ds, "p50"), "g_p50": med(gs, "p50"),
            "cpu_req_ms": cpu / n * 1000, "cpu_chunk_us": cpu / max(1, chunks) * 1e6}


def targets(upstream: str, db, tmp: Path, workers: list[int], quick: bool,
            client_cpu: int | None = None) -> list[str]:
    """The relay issue's targets, measured against the direct path in the same run."""
    model = {"name": "fake", "backend": "openai_compatible",
             "options": {"base_url": upstream + "/v1"}}
    direct = (upstream + "/v1/chat/completions", {})
    set_upstream(upstream, tokens=32, interval=0.0, chunk_chars=4, first_delay=0.0)
    rounds1, rounds50 = (20, 2) if quick else (150, 7)
    lines = [f"{'32-chunk streams, limits off':<24}{'req/s @1 d/g':>14}{'TTFT p50 @1 d/g':>18}"
             f"{'added':>9}{'req/s @50 d/g':>15}{'% direct':>10}{'CPU/req':>10}"
             f"{'CPU/chunk':>11}"]
    mem_line, detail_lines, verdicts = "", [], []
    for n in workers:
        gw = start_gateway(tmp / f"gw-w{n}", db.uri, {
            "models": [model], "tiers": {"off": {}}, "limits": {"default_tier": "off"},
            "server": {"log_level": "WARNING"}, "usage": {"flush_interval": 1.0}},
            serve_args=("--workers", str(n)) if n > 1 else ())
        try:
            if n > 1:
                time.sleep(3)   # every worker up
            key = gw.create_key(f"bench-w{n}@example.com", tier="off")
            via = (gw.url + "/v1/chat/completions", {"Authorization": f"Bearer {key}"})
            pids = tree_pids(gw.proc.pid)
            pin_away(pids, client_cpu)
            asyncio.run(run_load(*via, 50, 1, BODY))           # warm up
            one = alternate(direct, via, 1, rounds1, pids)
            # The same with 1-chunk streams: no rest of the stream is relayed right behind
            # the first token (with 32 chunks sent at once, client, gateway and upstream
            # all want a core at that moment; a model's paced tokens do not do that).
            set_upstream(upstream, tokens=1, interval=0.0)
            lone = alternate(direct, via, 1, rounds1, pids)
            set_upstream(upstream, tokens=32, interval=0.0)
            fifty = alternate(direct, via, 50, rounds50, pids)
            split = cpu_split(upstream, via, pids, rounds50)
            lines.append(
                f"{f'gateway, {n} worker(s)':<24}"
                f"{one['d_rate']:>7.0f}/{one['g_rate']:<6.0f}"
                f"{one['d_p50']:>9.2f}/{one['g_p50']:.2f}ms"
                f"{one['g_p50'] - one['d_p50']:>7.2f}ms"
                f"{fifty['d_rate']:>8.0f}/{fifty['g_rate']:<6.0f}"
                f"{100 * fifty['g_rate'] / fifty['d_rate']:>9.0f}%"
                f"{fifty['cpu_req_ms']:>8.2f}ms{fifty['cpu_chunk_us']:>9.1f}us")
            detail_lines.append(f"TTFT added at 1 stream, 1-chunk streams, {n} worker(s): "
                             f"{lone['g_p50'] - lone['d_p50']:.2f} ms (direct "
                             f"{lone['d_p50']:.2f} ms, gateway {lone['g_p50']:.2f} ms)")
            detail_lines.append(f"gateway CPU, {n} worker(s): {split[0]:.2f} ms per request "
                             f"+ {split[1]:.1f} us per relayed chunk (50 streams of 4 and of "
                             f"64 chunks)")
            added = one["g_p50"] - one["d_p50"]
            share = fifty["g_rate"] / fifty["d_rate"]
            verdicts.append(f"{n} worker(s): TTFT added at 1 stream {added:.2f} ms (target "
                            f"<= 0.5: {'met' if added <= 0.5 else 'not met'}); 50 streams "
                            f"{100 * share:.0f}% of direct (target >= 60%: "
                            f"{'met' if share >= 0.6 else 'not met'})")
            if n == workers[0]:
                set_upstream(upstream, tokens=2, interval=600.0)
                streams = 200 if quick else 1000
                base, full = asyncio.run(open_streams(via[0], via[1], streams, pids))
                set_upstream(upstream, tokens=32, interval=0.0)
                per = (full - base) / (streams - 10)
                mem_line = (f"memory per open stream ({streams} open, {n} worker(s)): "
                            f"{per:.1f} KB (RSS {base / 1024:.0f} MB -> {full / 1024:.0f} MB; "
                            f"target <= 20 KB: {'met' if per <= 20 else 'not met'})")
        finally:
            gw.stop()
    lines.append("(d/g: direct and gateway, run in turn three times each, medians; CPU per "
                 "request and per relayed chunk: the gateway processes' user+system CPU "
                 "over the 50-stream runs)")
    lines += detail_lines
    lines.append(mem_line)
    lines += ["against the targets (one run; the spread between runs on a shared machine is "
              "large, compare medians of several):", *("  " + v for v in verdicts)]
    return lines


def cpu_split(upstream: str, via, pids: list[int], rounds: int) -> tuple[float, float]:
    """The gateway's CPU as a fixed cost per request plus a cost per relayed chunk, from
    runs with 4 and with 64 chunks per stream (50 streams)."""
    per = {}
    for chunks in (4, 64):
        set_upstream(upstream, tokens=chunks, interval=0.0)
        before = cpu_seconds(pids)
        r = asyncio.run(run_load(*via, 50, rounds, BODY))
        per[chunks] = (cpu_seconds(pids) - before) / (r["n"] + 1)
    set_upstream(upstream, tokens=32, interval=0.0)
    chunk = (per[64] - per[4]) / 60
    return (per[4] - 4 * chunk) * 1000, chunk * 1e6


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
    parser.add_argument("--workers", type=int, default=2,
                        help="also measure the targets with this many gateway workers")
    parser.add_argument("--only-targets", action="store_true",
                        help="measure only the relay targets")
    parser.add_argument("--client-cpu", type=int, default=None,
                        help="pin the client to this core and every other process off it "
                             "(a client on another machine, as in production)")
    ns = parser.parse_args()
    cores = os.cpu_count() or 1
    if ns.client_cpu is not None and (cores < 2 or not 0 <= ns.client_cpu < cores):
        parser.error(f"--client-cpu needs at least two cores and a core number from 0 to "
                     f"{cores - 1}")
    workers = [1] + ([ns.workers] if ns.workers > 1 else [])
    rounds = {1: 5 if ns.quick else 200, 50: 2 if ns.quick else 10, 200: 1 if ns.quick else 3}
    tmp = Path(tempfile.mkdtemp(prefix="ayct-bench-"))
    port = free_port()
    upstream_proc = start_process([sys.executable, "-m", "bench.fake_upstream", "--port",
                                   str(port)], f"http://127.0.0.1:{port}/v1/models",
                                  tmp / "upstream.log")
    upstream = f"http://127.0.0.1:{port}"
    db = embedded_db.start("memory")
    if ns.client_cpu is not None:
        pin_away([upstream_proc.pid, db.process.pid], ns.client_cpu)
        os.sched_setaffinity(0, {ns.client_cpu})
    if ns.only_targets:
        try:
            print("\n".join(["", *targets(upstream, db, tmp, workers, ns.quick,
                                          ns.client_cpu)]))
        finally:
            stop_process(upstream_proc)
            db.stop()
        return
    model = {"name": "fake", "backend": "openai_compatible",
             "options": {"base_url": upstream + "/v1"}}
    tiers = {"off": {}, "on": {"requests_per_minute": 1_000_000, "tokens_per_minute": 10**9,
                               "tokens_per_day": 10**10, "concurrent_streams": 10_000}}
    gw = start_gateway(tmp / "gw", db.uri, {"models": [model], "tiers": tiers,
                                            "limits": {"default_tier": "off"},
                                            "server": {"log_level": "WARNING"},
                                            "usage": {"flush_interval": 1.0}})
    pin_away(tree_pids(gw.proc.pid), ns.client_cpu)
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
        pin_away([relay_proc.pid], ns.client_cpu)
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
        gw.stop()
        target_lines = targets(upstream, db, tmp, workers, ns.quick, ns.client_cpu)
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
    print("\n".join(["", *target_lines]))


if __name__ == "__main__":
    main()
