"""A backend plugin defined in a test module, registered through the plugins hook
exactly like a third-party one. It streams the words of the last user message back
with a short pause, so tests can see streaming and cancellation."""
import asyncio

from gateway.hookspecs import hookimpl
from gateway.types import Chunk, Usage


class EchoBackend:
    def __init__(self, model_cfg, config):
        self.name = model_cfg.name
        self.delay = float(model_cfg.options.get("delay", 0.0))

    async def start(self):
        pass

    async def close(self):
        pass

    async def health(self):
        return {"ok": True}

    async def chat(self, req):
        words = (req.messages[-1].get("content") or "").split()
        limit = req.max_tokens or len(words)
        for word in words[:limit]:
            await asyncio.sleep(self.delay)
            if word == "FAIL":  # lets tests cause a real backend failure mid-stream
                raise RuntimeError("echo backend failed on purpose")
            yield Chunk(word + " ")
        yield Chunk(finish_reason="stop" if limit >= len(words) else "length")
        yield Chunk(usage=Usage(len(words), min(limit, len(words))))

    async def completions(self, req):
        async for chunk in self.chat(type(req)("chat", req.model, {"messages": [
                {"role": "user", "content": req.prompt}]}, req.max_tokens)):
            yield chunk


@hookimpl
def register_backends(register, config):
    register("echo", EchoBackend)
