"""For ``bench.model_workers`` only: the llamacpp engine inside the gateway process, as
the ``llamacpp`` backend ran before model workers (the comparison's baseline). Never
use it to serve: a native crash here takes the whole gateway with it."""
from gateway.hookspecs import hookimpl


@hookimpl
def register_backends(register, config):
    """Register ``llamacpp_inprocess`` (the engine on the gateway's own event loop)."""
    from plugins.backends.llamacpp_engine import LlamaCppEngine
    register("llamacpp_inprocess", LlamaCppEngine)
