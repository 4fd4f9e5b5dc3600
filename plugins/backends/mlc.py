"""Built-in backend: MLC-LLM (``mlc_llm.AsyncMLCEngine``) in model workers, one per GPU.

MLC-LLM is native code (TVM, CUDA), so it runs in model worker processes
(``plugins.backends.mlc_engine`` inside ``plugins.backends.worker_server``), never in the
gateway: a CUDA error or a crash costs that worker's in-flight requests, and the
supervisor starts it again. ``serve --workers N`` shares the workers, so the weights
are on each GPU once, not N times. MLC-LLM is not on PyPI; install its wheel for your
GPU from https://llm.mlc.ai/docs/install/mlc_llm.html. The engine's documented
OpenAI-style API is all it uses (see ``plugins.backends.mlc_engine``).

Model options (``[[models]] options``):
  model           compiled model directory or "HF://mlc-ai/<name>-MLC" (required)
  model_lib       compiled model library (.so); default: found or JIT-compiled by MLC
  device          "auto" (default), "cuda", "cuda:1", "rocm", "vulkan", "metal"
  devices         list of devices, e.g. ["cuda:0", "cuda:1"]: one worker per device
                  (replicas of the model; ``cuda:N`` runs with CUDA_VISIBLE_DEVICES=N)
  mode            "local", "interactive" or "server" (default "server")
  engine_config   table of mlc_llm.serve.EngineConfig fields (e.g. gpu_memory_utilization,
                  max_num_sequence: the worker's capacity)
  engine_factory  "module:callable" that builds the engine (default
                  "mlc_llm:AsyncMLCEngine"; tests point it at a stand-in)
"""
from __future__ import annotations

import importlib.util
import re

from gateway.sdk import ConfigError, hookimpl
from plugins.backends.local_worker import LocalWorkerBackend

DEFAULT_FACTORY = "mlc_llm:AsyncMLCEngine"
_CUDA = re.compile(r"cuda:(\d+)")


class MLCBackend(LocalWorkerBackend):
    """An MLC-compiled model served by MLC-LLM in one model worker per device."""

    engine = "plugins.backends.mlc_engine:MLCEngine"

    def __init__(self, model_cfg, config) -> None:
        opts = model_cfg.options
        if not opts.get("model"):
            raise ConfigError(f"models.{model_cfg.name}: the mlc backend needs options.model "
                              "(a compiled model directory or HF://mlc-ai/... id)")
        factory = opts.get("engine_factory", DEFAULT_FACTORY).partition(":")[0]
        if factory.split(".")[0] == "mlc_llm" and importlib.util.find_spec("mlc_llm") is None:
            raise ConfigError("the mlc backend needs MLC-LLM: install the mlc_llm wheel "
                              "for your GPU (https://llm.mlc.ai/docs/install/mlc_llm.html), "
                              "or run `mlc_llm serve` behind the openai_compatible "
                              "backend")
        super().__init__(model_cfg, config)

    @classmethod
    def worker_specs(cls, model_cfg, config):
        """One worker per entry of ``devices`` (else one, on ``device``)."""
        devices = model_cfg.options.get("devices")
        if not devices:
            return super().worker_specs(model_cfg, config)
        specs = []
        for device in devices:
            options, env = dict(model_cfg.options), {}
            options.pop("devices")
            options["device"] = device
            cuda = _CUDA.fullmatch(str(device))
            if cuda:
                env["CUDA_VISIBLE_DEVICES"] = cuda.group(1)
                options["device"] = "cuda:0"     # the one GPU the worker sees
            cfg = type("WorkerModel", (), {"name": model_cfg.name, "options": options})
            specs.append(cls._spec(cfg, f"{model_cfg.name}@{device}", env))
        return specs


@hookimpl
def register_backends(register, config):
    """Register the ``mlc`` backend type (MLC-LLM in model workers)."""
    register("mlc", MLCBackend)
