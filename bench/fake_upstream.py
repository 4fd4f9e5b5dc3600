"""A controllable OpenAI-compatible upstream: fixed token rate, fixed chunk sizes.

Used by the benchmark (gateway vs direct) and by tests of the openai_compatible
backend. It is a real HTTP server (aiohttp); it streams ``tokens`` chunks of
``chunk_chars`` characters, one every ``interval`` seconds, and reports usage when
asked. ``GET /stats`` tells how many streams started, finished and were cut off by
the client (what disconnect tests check). ``--fail-status`` makes every completion
request fail with that HTTP status (failover tests); ``POST /settings`` changes any
setting of a running server.

    python -m bench.fake_upstream --port 9100 --tokens 64 --interval 0.005
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web


class FakeUpstream:
    """The server state: settings and counters.

    Beyond plain text it can answer as richer models do (for pass-through tests):
    ``tool_calls`` (a list of ``{"name", "arguments"}``: streamed as OpenAI streams
    them, the first delta of each call with id and name, then the arguments in
    ``chunk_chars`` pieces; ``finish_reason`` "tool_calls"), ``reasoning`` (that many
    ``reasoning_content`` chunks before the answer), ``logprobs``/``top_logprobs`` and
    ``n`` when the request asks, a ``system_fingerprint`` on every chunk. ``texts``: the
    plain answer's pieces, in turn (default: ``chunk_chars`` x's each). ``stop_after``:
    when the request has ``stop``, the plain answer ends after that many pieces as if
    its first stop sequence matched, named in the last choice under ``stop_key``
    (``stop_reason`` as vLLM says it, ``matched_stop`` as SGLang does). ``GET /last``
    returns the body of the last completion request (what the gateway forwarded).
    """

    def __init__(self, tokens: int = 32, interval: float = 0.0, chunk_chars: int = 4,
                 first_delay: float = 0.0, send_usage: bool = True,
                 fail_status: int = 0) -> None:
        self.tokens = tokens
        self.interval = interval
        self.chunk_chars = chunk_chars
        self.first_delay = first_delay
        self.send_usage = send_usage
        self.fail_status = fail_status   # answer every completion with this HTTP status
        self.tool_calls: list[dict] = []
        self.texts: list[str] = []
        self.reasoning = 0
        self.stop_after = 0
        self.stop_key = "stop_reason"
        self.last_body: dict = {}
        self.stats = {"started": 0, "finished": 0, "disconnected": 0, "active": 0,
                      "requests": 0}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.chat)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_get("/last", self.get_last)
        app.router.add_post("/settings", self.settings)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def get_last(self, request: web.Request) -> web.Response:
        return web.json_response(self.last_body)

    async def settings(self, request: web.Request) -> web.Response:
        for k, v in (await request.json()).items():
            setattr(self, k, v)
        return web.json_response({"ok": True})

    def _piece(self, i: int, default: str) -> str:
        """The plain answer's piece ``i``."""
        return self.texts[i % len(self.texts)] if self.texts else default

    def _logprobs(self, piece: str, top: int) -> dict:
        return {"content": [{"token": piece, "logprob": -0.25, "bytes": list(piece.encode()),
                             "top_logprobs": [{"token": piece, "logprob": -0.25,
                                               "bytes": list(piece.encode())}] * top}],
                "refusal": None}

    def _deltas(self, tokens: int, chat: bool, body: dict):
        """(delta or text, logprobs) of one choice, in order, and its finish reason."""
        piece = "x" * self.chunk_chars
        want_lp = bool(body.get("logprobs")) and chat
        top = int(body.get("top_logprobs") or 0)
        out = []
        if not chat:
            return [(piece, None)] * tokens, "length" if tokens < self.tokens else "stop"
        if self.tool_calls:
            for i, call in enumerate(self.tool_calls):
                out.append(({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                             "function": {"name": call["name"],
                                                          "arguments": ""}}]}, None))
                args = call["arguments"]
                for j in range(0, len(args), self.chunk_chars):
                    out.append(({"tool_calls": [{"index": i, "function": {
                        "arguments": args[j:j + self.chunk_chars]}}]}, None))
            out[0][0]["role"] = "assistant"
            out[0][0]["content"] = None
            return out, "tool_calls"
        for _ in range(self.reasoning):
            out.append(({"reasoning_content": "r" * self.chunk_chars}, None))
        for _ in range(tokens):
            out.append(({"content": piece}, self._logprobs(piece, top) if want_lp else None))
        return out, "length" if tokens < self.tokens else "stop"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        body = await request.json()
        self.last_body = body
        if self.fail_status:
            return web.json_response({"error": {"message": "fake failure", "type": "server_error",
                                                "param": None, "code": None}},
                                     status=self.fail_status)
        chat = request.path.endswith("chat/completions")
        tokens = min(self.tokens, int(body.get("max_tokens") or self.tokens))
        n = int(body.get("n") or 1)
        piece = "x" * self.chunk_chars
        plain = not (self.tool_calls or self.reasoning or body.get("logprobs") or n > 1)
        stops = body.get("stop")
        stopped = {}
        if self.stop_after and stops and plain and tokens > self.stop_after:
            tokens = self.stop_after
            stopped = {self.stop_key: stops if isinstance(stops, str) else stops[0]}
        if not body.get("stream"):
            text = "".join(self._piece(i, piece) for i in range(tokens))
            choice = {"index": 0, "finish_reason": "length" if tokens < self.tokens and
                      not stopped else "stop", **stopped,
                      **({"message": {"role": "assistant", "content": text}} if chat
                         else {"text": text})}
            return web.json_response({"id": "x", "object": "chat.completion", "choices": [choice],
                                      "usage": {"prompt_tokens": 5, "completion_tokens": tokens,
                                                "total_tokens": 5 + tokens}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.stats["started"] += 1
        self.stats["active"] += 1
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        try:
            if self.first_delay:
                await asyncio.sleep(self.first_delay)
            if plain:
                for i in range(tokens):
                    if self.interval and i:
                        await asyncio.sleep(self.interval)
                    last = i == tokens - 1
                    choice = {"index": 0, "finish_reason": ("length" if tokens < self.tokens
                                                            and not stopped else "stop")
                              if last else None, **(stopped if last else {})}
                    text = self._piece(i, piece)
                    choice.update({"delta": {"content": text}} if chat else {"text": text})
                    data = {"id": "x", "object": obj, "created": created, "model": "fake",
                            "choices": [choice]}
                    await resp.write(f"data: {json.dumps(data)}\n\n".encode())
                produced = tokens
            else:
                produced = 0
                deltas, finish = self._deltas(tokens, chat, body)
                for step, (delta, lp) in enumerate(deltas):
                    if self.interval and step:
                        await asyncio.sleep(self.interval)
                    last = step == len(deltas) - 1
                    for index in range(n):
                        choice = {"index": index, "logprobs": lp,
                                  "finish_reason": finish if last else None}
                        choice.update({"delta": delta} if chat else {"text": delta})
                        data = {"id": "x", "object": obj, "created": created, "model": "fake",
                                "system_fingerprint": "fp_fake", "choices": [choice]}
                        await resp.write(f"data: {json.dumps(data)}\n\n".encode())
                        produced += 1
            include = (body.get("stream_options") or {}).get("include_usage")
            if include and self.send_usage:
                data = {"id": "x", "object": obj, "created": created, "model": "fake",
                        "choices": [], "usage": {"prompt_tokens": 5,
                                                 "completion_tokens": produced,
                                                 "total_tokens": 5 + produced}}
                await resp.write(f"data: {json.dumps(data)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.stats["finished"] += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.stats["disconnected"] += 1
            raise
        finally:
            self.stats["active"] -= 1
        return resp


async def run(port: int, **settings) -> None:
    upstream = FakeUpstream(**settings)
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048)
    await site.start()
    print(f"READY {port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--interval", type=float, default=0.0)
    p.add_argument("--chunk-chars", type=int, default=4)
    p.add_argument("--first-delay", type=float, default=0.0)
    p.add_argument("--no-usage", action="store_true")
    p.add_argument("--fail-status", type=int, default=0,
                   help="answer every completion request with this HTTP status")
    ns = p.parse_args()
    asyncio.run(run(ns.port, tokens=ns.tokens, interval=ns.interval, chunk_chars=ns.chunk_chars,
                    first_delay=ns.first_delay, send_usage=not ns.no_usage,
                    fail_status=ns.fail_status))


if __name__ == "__main__":
    main()
