"""WebSocket ``delta`` messages carry tool-call deltas (and reasoning, several choices)
exactly as the upstream streamed them."""
from __future__ import annotations

from tests.relay.test_passthrough import ASK, CALLS, TOOLS
from tests.ws.client import Client, run


def test_ws_delta_carries_tool_calls(gw, up):
    up.set(tool_calls=CALLS)

    async def go():
        ws = await Client.connect(gw, gw.key)
        try:
            return await ws.chat("t1", {"model": "gpt-relay", "messages": ASK, "tools": TOOLS})
        finally:
            ws.close()
    msgs = run(go())
    deltas = [m for m in msgs if m["type"] == "delta"]
    assert msgs[-1]["type"] == "done" and msgs[-1]["finish_reason"] == "tool_calls"
    assert all("content" not in m for m in deltas)
    calls: dict[int, dict] = {}
    for m in deltas:
        for piece in m["tool_calls"]:
            call = calls.setdefault(piece["index"], {"id": None, "name": "", "arguments": ""})
            call["id"] = piece.get("id") or call["id"]
            call["name"] += piece.get("function", {}).get("name") or ""
            call["arguments"] += piece.get("function", {}).get("arguments") or ""
    assert calls == {i: {"id": f"call_{i}", **c} for i, c in enumerate(CALLS)}
    assert deltas[0]["tool_calls"] == [{"index": 0, "id": "call_0", "type": "function",
                                        "function": {"name": "get_weather", "arguments": ""}}]
    # Accounting: every argument piece counted (the upstream's usage says the same).
    assert msgs[-1]["usage"]["completion_tokens"] == len(deltas)


def test_ws_delta_reasoning_and_choices(gw, up):
    up.set(reasoning=2)

    async def go():
        ws = await Client.connect(gw, gw.key)
        try:
            return await ws.chat(7, {"model": "gpt-relay", "messages": ASK, "n": 2})
        finally:
            ws.close()
    msgs = run(go())
    deltas = [m for m in msgs if m["type"] == "delta"]
    for index in (0, 1):
        mine = [m for m in deltas if m.get("index", 0) == index]
        assert "".join(m.get("reasoning_content", "") for m in mine) == "rrrr" * 2
        assert "".join(m.get("content", "") for m in mine) == "xxxx" * 6
    assert msgs[-1]["usage"]["completion_tokens"] == 16
