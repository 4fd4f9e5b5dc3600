"""A custom limiter plugin from a test module: it refuses the model `echo-b` outright.
Registered with trylast so it runs after the built-in tier limiter has reserved."""
from gateway.hookspecs import hookimpl
from gateway.types import Admission


class ModelPause:
    name = "model_pause"

    def __init__(self):
        self.settled = []

    async def admit(self, principal, request):
        if request.model == "echo-b":
            return Admission(allowed=False, limiter=self.name, limit="model_paused", status=429,
                             message="echo-b is paused by the operator.", retry_after=30)
        return Admission(limiter=self.name)

    async def settle(self, admission, usage, outcome):
        self.settled.append(outcome)


@hookimpl(trylast=True)
def register_limiters(register, config, store):
    register(ModelPause())
