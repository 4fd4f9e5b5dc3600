"""WebSocket chat with the real default model (SmolLM2-135M-Instruct via llama-cpp-python)."""
import asyncio
import os
import time

import httpx
import pytest

from tests.ws.client import Client, run, text_of
from tests.ws.conftest import usage_events

pytest.importorskip("llama_cpp")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_share(pid: int, seconds: float, work=None) -> float:
    """Cores the process used over ``seconds`` (while ``work``, if any, runs meanwhile)."""
    task = asyncio.ensure_future(work) if work is not None else None
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    share = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    return share


def test_streaming_and_cancel_with_the_real_model(gateway):
    email = "ws-model@example.com"
    key = gateway.create_key(email)
    # the process that runs the model: its model worker (never the gateway itself)
    pid = httpx.get(gateway.url + "/readyz", timeout=10).json()["backends"][
        "smollm2-135m"]["pid"]

    async def go():
        c = await Client.connect(gateway, key)
        msgs = await c.chat("q", {"model": "smollm2-135m", "max_tokens": 24, "temperature": 0,
                                  "messages": [{"role": "user",
                                                "content": "What is the capital of France?"}]})
        start, *deltas, done = msgs
        assert start["type"] == "start" and done["type"] == "done", msgs[-1]
        assert len(deltas) >= 2 and text_of(msgs).strip()
        assert done["usage"]["completion_tokens"] == len(deltas)
        assert done["usage"]["prompt_tokens"] > 5 and done["usage"]["estimated"] is False

        # A long generation (this prompt and seed run to max_tokens), cancelled after a
        # while: the model stops working at once. Evidence: the model worker's CPU use while
        # it generates, against its CPU use after the cancel (a ratio, so a busy machine
        # slows both alike).
        await c.send({"type": "chat", "id": "long", "body": {
            "model": "smollm2-135m", "max_tokens": 1500, "temperature": 0.8, "seed": 1,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}})
        seen = 0

        async def read(n):
            nonlocal seen
            while seen < n:
                msg = await c.next_for("long")
                assert msg["type"] in ("start", "delta"), msg
                seen += msg["type"] == "delta"
        await read(5)
        during = await cpu_share(pid, 1.0, read(10**9))
        await c.send({"type": "cancel", "id": "long"})
        cancelled = (await c.until_final("long"))[-1]
        assert cancelled["type"] == "cancelled"
        assert seen <= cancelled["usage"]["completion_tokens"] < 1500
        await asyncio.sleep(0.5)
        after = await cpu_share(pid, 1.5)
        print(f"\n[ws cancel] model worker CPU while generating {during:.2f} cores, "
              f"after cancel {after:.2f} cores")
        assert after < during / 3

        # The same socket (and the freed model instance) serve the next request.
        msgs = await c.chat("after", {"model": "smollm2-135m", "max_tokens": 8,
                                      "messages": [{"role": "user", "content": "Say hi."}]})
        assert msgs[-1]["type"] == "done"
        c.close()
    run(go())

    deadline = time.monotonic() + 30
    while len(events := usage_events(gateway, email)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    by_status = sorted((e["status"], e["transport"]) for e in events)
    assert by_status == [(200, "ws"), (200, "ws"), (499, "ws")]
    for word in ("France", "dragon"):
        assert word not in repr(events) and word not in gateway.log()
