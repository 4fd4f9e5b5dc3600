"""Model workers benchmark: the default model through its worker vs in the gateway.

One gateway serves SmolLM2-135M twice: ``worker`` (the ``llamacpp`` backend: a model
worker process, reached through the relay) and ``inproc`` (the same engine inside the
gateway process, ``bench/inprocess_llamacpp.py``, as before model workers). Requests go
one at a time, alternating between the two, so both see the same machine. Printed:

- time to first token, p50 and p95 (a short prompt, ``max_tokens`` 1 .. the first
  content event), and its difference, worker - in-process (target: at most +1 ms);
- tokens per second while streaming (128 tokens, temperature 0: from the first to the
  last content event), and the ratio worker / in-process (target: within 5%).

    python -m bench.model_workers [--rounds 30]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.store import embedded_db  # noqa: E402
from tests.helpers import start_gateway  # noqa: E402

MODELS = [{"name": "worker", "backend": "llamacpp"},
          {"name": "inproc", "backend": "llamacpp_inprocess"}]
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def stream(client: httpx.Client, url: str, key: str, model: str, max_tokens: int):
    """(time to first content event, content-event times) of one streamed request."""
    start = time.perf_counter()
    times = []
    with client.stream("POST", url, headers={"Authorization": f"Bearer {key}"}, json={
            "model": model, "messages": PROMPT, "stream": True, "max_tokens": max_tokens,
            "temperature": 0}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                    times.append(time.perf_counter())
    return times[0] - start, times


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    ns = parser.parse_args()
    db = embedded_db.start("memory")
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    gw = start_gateway(tmp, db.uri, {"models": MODELS,
                                     "plugins": {"modules": ["bench.inprocess_llamacpp"]}},
                       timeout=180)
    try:
        key = gw.create_key()
        url = gw.url + "/v1/chat/completions"
        ttft = {m["name"]: [] for m in MODELS}
        rate = {m["name"]: [] for m in MODELS}
        with httpx.Client(timeout=120) as client:
            for name in ttft:                      # warm both (first-request costs)
                stream(client, url, key, name, 4)
            for i in range(ns.rounds):
                order = list(ttft) if i % 2 == 0 else list(reversed(ttft))
                for name in order:
                    ttft[name].append(stream(client, url, key, name, 1)[0] * 1000)
                for name in order:
                    _, times = stream(client, url, key, name, 128)
                    if len(times) > 10:
                        rate[name].append((len(times) - 1) / (times[-1] - times[0]))
        print(f"model workers benchmark: SmolLM2-135M, {ns.rounds} rounds, one request at a time")
        for name in ttft:
            print(f"  {name:7s} TTFT p50 {statistics.median(ttft[name]):7.2f} ms  "
                  f"p95 {pct(ttft[name], 0.95):7.2f} ms   tokens/s p50 "
                  f"{statistics.median(rate[name]):6.1f}")
        added = statistics.median(ttft["worker"]) - statistics.median(ttft["inproc"])
        ratio = statistics.median(rate["worker"]) / statistics.median(rate["inproc"])
        print(f"  TTFT added by the worker (p50): {added:+.2f} ms   (target: <= +1 ms)")
        print(f"  tokens/s worker / in-process:   {ratio:.3f}      (target: 0.95 .. 1.05)")
    finally:
        gw.stop()
        db.stop()


if __name__ == "__main__":
    main()
