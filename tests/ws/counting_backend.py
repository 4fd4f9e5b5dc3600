"""A test backend plugin (registered through the plugin hook like a third-party one)
that produces a long stream of numbered tokens and reports its own progress to a file,
so tests can see from outside the gateway process whether the backend kept working,
paused (slow reader) or was closed (cancel).

Model options: ``tokens`` (how many, default 100), ``delay`` (seconds per token),
``state_dir`` (where ``<user>.json`` progress files go; the request's ``user`` field,
or else its request id, names the file), ``progress_every`` (tokens between progress
writes, default 200).
"""
import asyncio
import json
import os

from gateway.hookspecs import hookimpl
from gateway.types import Chunk, Usage


class CountingBackend:
    """Streams ``t0 t1 t2 ...``; writes {"produced", "closed", "finished"} as it goes."""

    def __init__(self, model_cfg, config):
        self.name = model_cfg.name
        self.tokens = int(model_cfg.options.get("tokens", 100))
        self.delay = float(model_cfg.options.get("delay", 0.0))
        self.state_dir = model_cfg.options.get("state_dir", "")
        self.every = int(model_cfg.options.get("progress_every", 200))

    async def start(self):
        pass

    async def close(self):
        pass

    async def health(self):
        return {"ok": True}

    def _report(self, marker, produced, closed, finished):
        if not (self.state_dir and marker):
            return
        path = os.path.join(self.state_dir, f"{marker}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump({"produced": produced, "closed": closed, "finished": finished}, fh)
        os.replace(path + ".tmp", path)

    async def chat(self, req):
        marker = req.body.get("user") or req.request_id
        total = min(self.tokens, req.max_tokens or self.tokens)
        produced, finished = 0, False
        try:
            for i in range(total):
                if self.delay:
                    await asyncio.sleep(self.delay)
                produced += 1
                if produced % self.every == 0:
                    self._report(marker, produced, False, False)
                yield Chunk(f"t{i} ")
            finished = True
            yield Chunk(finish_reason="stop" if total == self.tokens else "length")
            yield Chunk(usage=Usage(5, produced))
        finally:
            self._report(marker, produced, True, finished)

    async def completions(self, req):
        async for chunk in self.chat(req):
            yield chunk


@hookimpl
def register_backends(register, config):
    register("counting", CountingBackend)
