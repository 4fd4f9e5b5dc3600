"""A backend plugin defined in a test module, registered through the plugins hook
exactly like a third-party one. It streams the words of the last user message back
with a short pause, so tests can see streaming and cancellation.

Written with the plugin SDK (``gateway.sdk``): ``start``/``close``/``health`` and
``completions`` (the prompt as one user message) come from ``sdk.Backend``."""
import asyncio

from gateway import sdk


class EchoBackend(sdk.Backend):
    class Options(sdk.Options):
        # Other keys are ignored, not refused: tests swap the example config's llamacpp
        # model (options n_ctx, instances) for this backend.
        ignore_unknown = True
        delay: float = 0.0

    def __init__(self, model_cfg, config):
        super().__init__(model_cfg, config)
        self.delay = self.options.delay

    async def chat(self, req):
        words = (req.messages[-1].get("content") or "").split()
        limit = req.max_tokens or len(words)
        for word in words[:limit]:
            await asyncio.sleep(self.delay)
            if word == "FAIL":  # lets tests cause a real backend failure mid-stream
                raise RuntimeError("echo backend failed on purpose")
            yield sdk.Chunk(word + " ")
        yield sdk.Chunk(finish_reason="stop" if limit >= len(words) else "length")
        yield sdk.Chunk(usage=sdk.Usage(len(words), min(limit, len(words))))


@sdk.hookimpl
def register_backends(register, config):
    register("echo", EchoBackend)
