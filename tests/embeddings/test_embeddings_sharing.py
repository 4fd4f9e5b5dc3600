"""Issue 22, security 3: one embeddings request cannot hold the embedder.

The real SmolLM2 model in a real model worker: a large request (2,048 token arrays of 8
ids, about a minute and a half of the embedder's time on two cores, in one batch step
after another) is running when

- another account sends a 1-token request: it is served between two batches of the large
  one, so it finishes while the large one is still running (before: it waited for all
  of it);
- its client disconnects: the worker stops before its next batch and goes idle
  (before: it embedded the remaining inputs for nobody).

The figures (the small request's wait, the worker's CPU after the disconnect) are
printed with ``-s``.
"""
import json
import os
import select
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import wait_until

MODEL = "emb-sharing"          # a worker of its own (workers are registered by model)
BIG = [[504, 2444, 28, 504, 2444, 28, 504, 2444]] * 2048      # ~16k tokens, ~72 KB
TICK = os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def gw(mongo, tmp_path_factory):
    from tests.inprocess import start_inprocess
    g = start_inprocess(tmp_path_factory.mktemp("emb-sharing"), mongo.uri,
                        {"tiers": {"free": {}}, "embeddings": {"max_inputs": 2048},
                         "models": [{"name": MODEL, "backend": "llamacpp"}]})
    # The embedder is loaded by the first embeddings request.
    r = httpx.post(g.url + "/v1/embeddings", json={"model": MODEL, "input": "warm up"},
                   headers={"Authorization": f"Bearer {g.create_key()}"}, timeout=120)
    assert r.status_code == 200, r.text
    yield g
    g.stop()


def worker_pid() -> int:
    from gateway import model_workers
    return model_workers.workers_for(MODEL)[0].pid


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def send_large(gw, key: str) -> socket.socket:
    """The large request on a raw socket (so the test decides when the client leaves)."""
    body = json.dumps({"model": MODEL, "input": BIG}).encode()
    url = urlsplit(gw.url)
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: {url.netloc}\r\n"
                 f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def wait_busy(pid: int, since: float) -> None:
    """Until the worker has spent half a CPU-second on the large request."""
    wait_until(lambda: cpu_seconds(pid) - since > 0.5, timeout=60,
               what="the worker embedding the large request")


def wait_idle(pid: int, timeout: float) -> float:
    """Seconds until the worker's CPU over one second falls under 0.15 s (idle)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < 0.15:
            return time.monotonic() - start
    raise AssertionError(f"the worker was still busy {timeout:.0f} s after the client left")


def test_another_accounts_request_is_served_between_batches_of_a_large_one(gw):
    pid = worker_pid()
    large_key, small_key = gw.create_key(), gw.create_key()    # two accounts
    start_cpu = cpu_seconds(pid)
    sock = send_large(gw, large_key)
    try:
        wait_busy(pid, start_cpu)
        t0 = time.monotonic()
        r = httpx.post(gw.url + "/v1/embeddings", json={"model": MODEL, "input": [[504]]},
                       headers={"Authorization": f"Bearer {small_key}"}, timeout=300)
        waited = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == 1
        # The large request has not been answered yet: the small one did not wait for it.
        answered = select.select([sock], [], [], 0)[0]
        assert not answered, f"the large request finished first (small one waited {waited:.1f} s)"
        print(f"\n[figure] a second account's 1-token request waited {waited:.2f} s "
              f"behind a 2,048-input request")
    finally:
        sock.close()
    wait_idle(pid, 60)      # leave the worker idle for the next test


def test_a_client_that_leaves_stops_the_work_before_the_next_batch(gw):
    pid = worker_pid()
    start_cpu = cpu_seconds(pid)
    sock = send_large(gw, gw.create_key())
    wait_busy(pid, start_cpu)
    sock.close()                      # the client goes away
    left_cpu = cpu_seconds(pid)
    # The large request would keep the worker busy for over a minute: it is idle again
    # within a few batches.
    took = wait_idle(pid, 30)
    spent = cpu_seconds(pid) - left_cpu
    print(f"\n[figure] after the client left: worker idle within {took:.1f} s, "
          f"{spent:.2f} CPU-s spent")
    # And it serves the next request.
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": MODEL, "input": "hello"},
                   headers={"Authorization": f"Bearer {gw.create_key()}"}, timeout=60)
    assert r.status_code == 200, r.text
