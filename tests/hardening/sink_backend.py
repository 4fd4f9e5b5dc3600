"""A test backend that accepts every request the gateway lets through (any content
shape) and answers "ok": the fuzz tests probe the gateway, not a test backend's parsing."""
from gateway.hookspecs import hookimpl
from gateway.types import Chunk, Usage
from tests.plugins.echo_backend import EchoBackend


class SinkBackend(EchoBackend):
    async def chat(self, req):
        yield Chunk("ok")
        yield Chunk(finish_reason="stop")
        yield Chunk(usage=Usage(1, 1))

    completions = chat


@hookimpl
def register_backends(register, config):
    register("sink", SinkBackend)
