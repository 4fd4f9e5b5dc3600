"""Benchmark: what hostile input costs the event loop.

1. The cost of parsing and validating the largest allowed body (``max_body_bytes``,
   1 MiB by default), for the worst shapes we know: CPU time of the synchronous path,
   and the worst event-loop stall when the body takes the real path (large bodies go
   to a worker thread; a 1 ms ticker measures how late the loop wakes up).
2. The worst event-loop stall of a real gateway process while it answers the fuzz
   corpus of tests/hardening/test_fuzz.py (Hypothesis, fixed seed) over HTTP and the
   WebSocket, plus the large hostile bodies, measured inside the process by the
   ``tests.hardening.looplag`` probe; and the slowest /healthz seen meanwhile.

    python -m bench.validation_stall [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.store import embedded_db  # noqa: E402

from gateway.relay import validation  # noqa: E402
from gateway.errors import APIError  # noqa: E402
from tests.helpers import start_gateway  # noqa: E402

LIMIT = 1 << 20
HEAD = b'{"model":"sink","messages":[{"role":"user","content":"hi"}]'


def _fill(prefix: bytes, item: bytes, suffix: bytes) -> bytes:
    """prefix + item,item,... + suffix, as close to LIMIT bytes as it gets."""
    n = (LIMIT - len(prefix) - len(suffix)) // (len(item) + 1)
    return prefix + b",".join([item] * n) + suffix


def corpus() -> dict[str, bytes]:
    """The largest allowed bodies of the shapes that cost the most (each <= 1 MiB)."""
    return {
        "stop: [1, 1, ...] (400)": _fill(HEAD + b',"stop":[', b"1", b"]}"),
        "30k messages (valid)": _fill(b'{"model":"sink","messages":[',
                                      b'{"role":"user","content":"hi"}', b"]}"),
        "30k messages, last bad (400)": _fill(
            b'{"model":"sink","messages":[', b'{"role":"user","content":"hi"}',
            b',{"role":7}]}'),
        "floats in metadata (valid)": _fill(HEAD + b',"metadata":{"a":[', b"0.123456789",
                                            b"]}}"),
        "ints in metadata (valid)": _fill(HEAD + b',"metadata":{"a":[', b"7", b"]}}"),
        "short strings (valid)": _fill(HEAD + b',"metadata":{"a":[', b'"ab"', b"]}}"),
        "one 1 MB prompt (valid)": HEAD[:-len(b'"hi"}]')] + b'"' + b"x" * (LIMIT - 100)
        + b'"}]}',
        "99k empty arrays (valid)": HEAD + b',"metadata":{"a":[' + b",".join(
            [b"[]"] * 99_000) + b"]}}",
        "300k empty arrays (400)": _fill(HEAD + b',"metadata":{"a":[', b"[]", b"]}}"),
        "60-deep chains (valid)": HEAD + b',"metadata":{"a":[' + b",".join(
            [b"[" * 60 + b"]" * 60] * 1600) + b"]}}",
        "60k unknown fields (400)": b'{"model":"sink","messages":[{"role":"user"}],' +
        b",".join(b'"k%d":1' % i for i in range(60_000)) + b"}",
    }


def outcome(body: bytes) -> str:
    try:
        validation.parse_and_validate("chat", body)
        return "ok"
    except APIError as err:
        return f"{err.status} {err.code}"


async def stall_of(body: bytes) -> float:
    """Worst lateness (ms) of a 1 ms ticker while the body takes the real async path."""
    worst, running = 0.0, True

    async def ticker():
        nonlocal worst
        while running:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - before - 0.001)
    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    try:
        await validation.parse_and_validate_async("chat", body)
    except APIError:
        pass
    await asyncio.sleep(0.005)
    running = False
    await task
    return 1000 * worst


def part_one(rounds: int) -> None:
    print(f"\n1. Parsing + validating the largest allowed body ({LIMIT} bytes), "
          f"median of {rounds}")
    print(f"{'body':34s} {'bytes':>8s} {'outcome':>22s} {'CPU ms':>7s} {'ms/100KB':>8s} "
          f"{'loop stall ms':>13s}")
    worst_cpu, worst_stall = ("", 0.0), ("", 0.0)
    for name, body in corpus().items():
        assert len(body) <= LIMIT, (name, len(body))
        result = outcome(body)
        cpu = []
        for _ in range(rounds):
            started = time.process_time()
            outcome(body)
            cpu.append(1000 * (time.process_time() - started))
        stall = max(asyncio.run(stall_of(body)) for _ in range(rounds))
        ms = statistics.median(cpu)
        print(f"{name:34s} {len(body):8d} {result:>22s} {ms:7.1f} "
              f"{ms * 100_000 / len(body):8.1f} {stall:13.1f}")
        worst_cpu = max(worst_cpu, (name, ms), key=lambda x: x[1])
        worst_stall = max(worst_stall, (name, stall), key=lambda x: x[1])
    print(f"worst CPU: {worst_cpu[1]:.1f} ms ({worst_cpu[0]}); worst loop stall: "
          f"{worst_stall[1]:.1f} ms ({worst_stall[0]})")


def fuzz_corpus(n_http: int, n_ws: int) -> tuple[list[bytes], list]:
    """The bodies and frames test_fuzz.py generates (Hypothesis, derandomized)."""
    from hypothesis import given, settings

    from tests.hardening import test_fuzz as fz
    bodies: list[bytes] = []
    frames: list = []
    quiet = settings(fz.FUZZ, max_examples=n_http, phases=["generate"])

    @quiet
    @given(raw=fz.RAW)
    def take_raw(raw):
        bodies.append(raw)

    @quiet
    @given(raw=fz.POISONED)
    def take_poisoned(raw):
        bodies.append(raw.encode())

    @settings(fz.FUZZ, max_examples=n_ws, phases=["generate"])
    @given(frame=fz.FRAME)
    def take_frame(frame):
        frames.append(frame)
    take_raw()
    take_poisoned()
    take_frame()
    return bodies + fz.HUGE + list(corpus().values()), frames


def part_two(n_http: int, n_ws: int) -> None:
    from websockets.sync.client import connect

    from tests.hardening.conftest import loop_lag_ms, sections
    bodies, frames = fuzz_corpus(n_http, n_ws)
    print(f"\n2. A gateway process answering the fuzz corpus ({len(bodies)} HTTP bodies, "
          f"{len(frames)} WebSocket frames)")
    db = embedded_db.start("memory")
    gw = start_gateway(Path(tempfile.mkdtemp(prefix="stall-")), db.uri, sections())
    try:
        key = gw.create_key("bench@example.com")
        health, stop = [0.0], threading.Event()

        def probe():
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    started = time.perf_counter()
                    client.get(gw.url + "/healthz")
                    health[0] = max(health[0], time.perf_counter() - started)
                    time.sleep(0.01)
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        loop_lag_ms(gw)
        statuses: dict[int, int] = {}
        with httpx.Client(timeout=60) as client:
            for body in bodies:
                resp = client.post(gw.url + "/v1/chat/completions", content=body,
                                   headers={"Authorization": f"Bearer {key}"})
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                if resp.status_code >= 500:
                    print(f"  {resp.status_code} for {body[:120]!r}…: {resp.text[:200]}")
        http_lag = loop_lag_ms(gw)
        url = gw.url.replace("http://", "ws://") + "/v1/chat/ws"
        sent = 0
        for frame in frames + [json.dumps({"type": "chat", "id": "big", "body": {
                "model": "sink", "messages": [{"role": "user"}], "stop": [1] * 300_000}})]:
            with connect(url, additional_headers={"Authorization": f"Bearer {key}"},
                         compression=None, max_size=None, proxy=None) as ws:
                ws.recv(timeout=30)
                ws.send(frame)
                ws.send('{"type":"ping","id":"end"}')
                while json.loads(ws.recv(timeout=30)).get("id") != "end":
                    pass
                sent += 1
        ws_lag = loop_lag_ms(gw)
        stop.set()
        prober.join()
        print(f"HTTP statuses: {dict(sorted(statuses.items()))}")
        print(f"worst event-loop stall: HTTP {http_lag:.1f} ms, WebSocket {ws_lag:.1f} ms; "
              f"slowest /healthz meanwhile: {1000 * health[0]:.1f} ms")
        for lag in (http_lag, ws_lag):
            if lag > 50:   # say where the loop was
                print(f"  stall: {lag!r}")
        bad = [line for line in gw.log().splitlines() if any(s in line for s in (
            "Traceback", "unhandled", "internal_error", "ERROR"))]
        print(f"error lines in the gateway log: {len(bad)}", *bad[:5], sep="\n  ")
    finally:
        gw.stop()
        db.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and examples")
    args = parser.parse_args()
    part_one(3 if args.quick else 7)
    part_two(*((100, 60) if args.quick else (300, 200)))


if __name__ == "__main__":
    main()
