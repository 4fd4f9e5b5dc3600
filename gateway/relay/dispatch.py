"""A request's turn at a model's capacity: the fair queues of the gateway's models.

A model has a queue when its capacity is known: ``max_concurrency`` in its config
(sequences per replica), or what its model workers report. Then
:meth:`Dispatcher.turn` waits (token-fairly, :mod:`gateway.relay.fair_queue`) until a
replica has a free slot, telling the waiting client every ``queue.keepalive`` seconds
(``on_queued(position)``: an SSE comment, a WebSocket ``queued`` message), and gives up
after ``queue.max_wait`` (503 ``backend_busy``); an account with
``queue.max_waiting_per_account`` requests waiting gets 429. :meth:`Dispatcher.done`
frees the slot and charges the account the tokens it was served.

A model without a known capacity has no queue: its requests go straight through, as
before (no cost on the hot path but one dictionary lookup).
"""
from __future__ import annotations

import asyncio
import logging
import math
from typing import Awaitable, Callable

from gateway import metrics
from gateway.errors import APIError
from gateway.relay.fair_queue import FairQueue, QueueFull, Ticket
from gateway.types import Usage

log = logging.getLogger("allyoucantoken.queue")
OnQueued = Callable[[int], Awaitable[None]]


class Dispatcher:
    """The fair queues of one gateway process's models (see the module)."""

    def __init__(self, config) -> None:
        self.config = config
        self.queues: dict[str, FairQueue] = {}

    def build(self, backends: dict) -> None:
        """A queue for each model whose capacity is configured or reported (call after
        the backends started: model workers report their capacity at start)."""
        for model in self.config.models:
            backend = backends[model.name]
            per_replica = model.max_concurrency or int(
                getattr(backend, "reported_capacity", lambda: 0)() or 0)
            if per_replica > 0:
                replicas = len(getattr(backend, "replicas", None) or [None])
                self.queues[model.name] = FairQueue(
                    [per_replica] * replicas,
                    max_waiting_per_account=self.config.queue.max_waiting_per_account)
                metrics.QUEUE_SLOTS.labels(model.name).set(per_replica * replicas)
                queue = self.queues[model.name]
                for i in range(replicas):
                    metrics.SLOTS_BUSY.labels(model.name, str(i)).set_function(
                        lambda queue=queue, i=i: queue.busy[i])
                log.info("model %s: %d slot(s) on %d replica(s), fair queuing in the gateway",
                         model.name, per_replica * replicas, replicas)

    async def turn(self, queue: FairQueue, model: str, principal,
                   on_queued: OnQueued | None) -> Ticket:
        """Wait for a slot (see the module); the ticket says which replica."""
        tier = self.config.tiers.get(principal.tier)
        weight, priority = (tier.weight, tier.priority) if tier else (1.0, 0)
        try:
            ticket = queue.enter(principal.account_id, weight, priority)
        except QueueFull:
            raise APIError(429, "You have too many requests waiting for this model "
                                f"(at most {queue.max_waiting_per_account}); wait for one "
                                "to start.", code="too_many_waiting",
                           headers={"Retry-After": "1"}) from None
        if ticket.granted:
            return ticket
        cfg = self.config.queue
        metrics.QUEUE_WAITING.labels(model, principal.tier).inc()
        try:
            deadline = asyncio.get_running_loop().time() + cfg.max_wait
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    ticket.leave()
                    raise APIError(503, f"The model `{model}` is at capacity and no slot "
                                        f"freed within {cfg.max_wait:g}s; try again shortly.",
                                   code="backend_busy", headers={
                                       "Retry-After": str(max(1, math.ceil(cfg.keepalive)))})
                try:
                    await asyncio.wait_for(asyncio.shield(ticket.future),
                                           min(cfg.keepalive, left))
                    return ticket
                except TimeoutError:
                    if on_queued is not None and not ticket.granted:
                        await on_queued(ticket.position())
                    if ticket.granted:
                        return ticket
        except BaseException:
            ticket.leave()       # gone (cancelled) or refused: out of the queue
            raise
        finally:
            metrics.QUEUE_WAITING.labels(model, principal.tier).dec()
            metrics.QUEUE_WAIT.labels(model, principal.tier).observe(ticket.waited)

    def done(self, queue: FairQueue, ticket: Ticket, principal, usage: Usage) -> None:
        """Free the slot; charge the account what it was served."""
        tier = self.config.tiers.get(principal.tier)
        cost = usage.prompt_tokens * self.config.queue.input_weight + usage.completion_tokens
        queue.charge(principal.account_id, tier.weight if tier else 1.0, cost)
        queue.release(ticket)
