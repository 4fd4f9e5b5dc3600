"""A test backend that accepts every request the gateway lets through (any content
shape) and answers "ok": the fuzz tests probe the gateway, not a test backend's parsing."""
from gateway.hookspecs import hookimpl
from gateway.types import Chunk, Usage


class SinkBackend:
    def __init__(self, model_cfg, config):
        self.name = model_cfg.name

    async def start(self):
        pass

    async def close(self):
        pass

    async def health(self):
        return {"ok": True}

    async def chat(self, req):
        yield Chunk("ok")
        yield Chunk(finish_reason="stop")
        yield Chunk(usage=Usage(1, 1))

    completions = chat


@hookimpl
def register_backends(register, config):
    register("sink", SinkBackend)
