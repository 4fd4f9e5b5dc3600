"""A test backend whose health the test switches: unhealthy while the file
``options.down_file`` exists. It streams the words of the last message back."""
import os

from gateway.hookspecs import hookimpl
from gateway.types import Chunk, Usage


class SwitchBackend:
    def __init__(self, model_cfg, config):
        self.name = model_cfg.name
        self.down_file = model_cfg.options["down_file"]

    async def start(self):
        pass

    async def close(self):
        pass

    async def health(self):
        return {"ok": not os.path.exists(self.down_file)}

    async def chat(self, req):
        words = (req.messages[-1].get("content") or "").split()
        for word in words:
            yield Chunk(word + " ")
        yield Chunk(finish_reason="stop")
        yield Chunk(usage=Usage(len(words), len(words)))

    def completions(self, req):
        return self.chat(req)


@hookimpl
def register_backends(register, config):
    register("switch", SwitchBackend)
