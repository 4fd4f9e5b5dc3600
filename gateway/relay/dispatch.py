"""A request's turn at a model's capacity: the fair queues of the gateway's models.

A model has a queue when its capacity is known: ``max_concurrency`` in its config
(sequences per replica), or what its model workers report. Then
:meth:`Dispatcher.turn` waits (token-fairly, :mod:`gateway.relay.fair_queue`) until a
replica has a free slot, telling the waiting client every ``queue.keepalive`` seconds
(``on_queued(position)``: an SSE comment, a WebSocket ``queued`` message), and gives up
after ``queue.max_wait`` (503 ``backend_busy``); an account with
``queue.max_waiting_per_account`` requests waiting gets 429. :meth:`Dispatcher.done`
frees the slot and charges the account the tokens it was served.

Several gateway processes (``--workers``, several machines) share a model's slots:
each takes a share by its demand, agreed through one database document per model that
every process rewrites in the background (:mod:`gateway.relay.capacity_shares`); the
request path never waits for the database.

A model without a known capacity has no queue: its requests go straight through, as
before (no cost on the hot path but one dictionary lookup).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
from typing import Awaitable, Callable

from gateway.obs import metrics
from gateway.errors import APIError
from gateway.relay import capacity_shares
from gateway.relay.fair_queue import FairQueue, QueueFull, Ticket
from gateway.relay.streaming import estimate_prompt_tokens
from gateway.types import Usage

log = logging.getLogger("allyoucantoken.queue")
OnQueued = Callable[[int], Awaitable[None]]


class Dispatcher:
    """The fair queues of one gateway process's models (see the module)."""

    def __init__(self, config) -> None:
        self.config = config
        self.queues: dict[str, FairQueue] = {}
        self.capacities: dict[str, list[int]] = {}      # each replica's, whole model
        # The capacity document of each model: the model's name, or name@host for a model
        # served by this machine's own model workers (another machine has its own).
        self.share_ids: dict[str, str] = {}
        # a field name in the capacity documents: no dots (a host name may have them)
        host = socket.gethostname().replace(".", "_").replace("$", "_")
        self.holder = f"{host}:{os.getpid()}:{secrets.token_hex(4)}"
        self._task: asyncio.Task | None = None
        self._store = None
        self._reported: set[str] = set()        # models whose shares were agreed once
        self._locks: dict[str, asyncio.Lock] = {}  # one round at a time per model
        self._kicked: set[str] = set()          # models with an early round on its way
        self._early: set[asyncio.Task] = set()  # those rounds
        self._held: dict[str, int] = {}         # slots held per model, as last agreed
        self._last_kick: dict[str, float] = {}  # when each model's last early round began
        self._waiting_tiers: dict[str, dict[str, int]] = {}  # model -> tier -> waiting
        self._failing = False

    def build(self, backends: dict, store=None) -> None:
        """A queue for each model whose capacity is configured or reported (call after
        the backends started: model workers report their capacity at start); with a
        ``store``, the capacity is shared with the other gateway processes
        (:mod:`gateway.relay.capacity_shares`)."""
        for model in self.config.models:
            backend = backends[model.name]
            per_replica = model.max_concurrency or int(
                getattr(backend, "reported_capacity", lambda: 0)() or 0)
            if per_replica > 0:
                replicas = len(getattr(backend, "replicas", None) or [None])
                self.queues[model.name] = FairQueue(
                    [per_replica] * replicas,
                    max_waiting_per_account=self.config.queue.max_waiting_per_account,
                    name=model.name)
                metrics.QUEUE_SLOTS.labels(model.name).set(per_replica * replicas)
                queue = self.queues[model.name]
                self.capacities[model.name] = [per_replica] * replicas
                self.share_ids[model.name] = model.name if not getattr(
                    backend, "workers", None) else f"{model.name}@{socket.gethostname()}"
                for i in range(replicas):
                    metrics.SLOTS_BUSY.labels(model.name, str(i)).set_function(
                        lambda queue=queue, i=i: queue.busy[i])
                log.info("model %s: %d slot(s) on %d replica(s), fair queuing in the gateway",
                         model.name, per_replica * replicas, replicas)

        if store is not None and self.queues:
            self._store = store

    async def start_sharing(self) -> None:
        """The first round before the gateway listens (at most 2 s), then the loop."""
        if self._store is None:
            return
        for model, queue in self.queues.items():  # nothing held yet: start from none
            for replica in range(len(queue.capacity)):
                queue.capacity[replica] = 0
            queue.on_backlog = lambda model=model: self._kick(model)
            queue.linger = capacity_shares.LINGER
        try:
            await asyncio.wait_for(self.share_round(), 2.0)
        except TimeoutError:
            pass
        for model, queue in self.queues.items():  # never reached the database: all of it
            if model not in self._reported:
                for replica, capacity in enumerate(self.capacities[model]):
                    queue.set_capacity(replica, capacity)
        self._task = asyncio.ensure_future(self._share_loop())

    async def share_round(self) -> None:
        """One round for every model: report demand, give back or take slots (see
        :mod:`gateway.relay.capacity_shares`), and set this process's capacity."""
        for model in self.queues:
            await self._share_once(model)

    async def _share_once(self, model: str) -> None:
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            try:
                await self._share(model, self.queues[model])
                self._reported.add(model)
                self._failing = False
            except Exception as exc:  # noqa: BLE001 - keep what it holds
                if not self._failing:
                    log.warning("capacity shares of %s not reported (%s); keeping %s", model,
                                type(exc).__name__, "the slots held" if model in
                                self._reported else "the whole capacity")
                self._failing = True

    def _kick(self, model: str) -> None:
        """A round for ``model`` now rather than at the next interval: an account started
        waiting here, or this process holds slots it may no longer use. At most one
        round on its way per model and one kick per ``KICK_SPACING``; the interval's
        rounds catch what a skipped kick would have."""
        now = asyncio.get_running_loop().time()
        if self._task is None or model in self._kicked or \
                now - self._last_kick.get(model, -1.0) < capacity_shares.KICK_SPACING:
            return
        self._kicked.add(model)
        self._last_kick[model] = now

        async def run() -> None:
            try:
                await self._share_once(model)
            finally:
                self._kicked.discard(model)
        task = asyncio.ensure_future(run())
        self._early.add(task)                   # held: the loop keeps only weak refs
        task.add_done_callback(self._early.discard)

    async def _share(self, model: str, queue: FairQueue) -> None:
        store, me = self._store.capacity, self.holder
        capacities = self.capacities[model]
        capacity = sum(capacities)
        doc = self.share_ids[model]
        live = {"busy": queue.slots_busy, "waiting": queue.waiting,
                "tiers": [[t, n] for t, n in self._waiting_tiers.get(model, {}).items() if n]}
        view = await store.report(doc, me, capacity_shares.bounded(queue.demand(), me),
                                  capacity_shares.TTL, live)
        holders = view["holders"]
        held = holders.get(me, {}).get("slots", 0)
        target = capacity_shares.shares(capacity, {h: v["accounts"]
                                                   for h, v in holders.items()})[me]
        keep = max(target, queue.slots_busy)
        if held > keep:
            await store.give_back(doc, me, held - keep)
            held = keep
        elif held < target:
            want = target - held
            while want > 0 and not await store.take(doc, me, want, capacity):
                want //= 2
            held += want
        holders.setdefault(me, {})["slots"] = held
        self._held[model] = held
        mine = min(held, target)
        start = sum(holders[h]["slots"] for h in sorted(holders) if h < me)
        for replica, slots in enumerate(capacity_shares.lay(capacities, start, mine)):
            if queue.capacity[replica] != slots:
                queue.set_capacity(replica, slots)

    async def _share_loop(self) -> None:
        while True:
            await asyncio.sleep(capacity_shares.INTERVAL)
            await self.share_round()

    async def stop(self) -> None:
        """Stop sharing; give this process's slots back at once."""
        if self._task is None:
            return
        for task in (self._task, *self._early):
            task.cancel()
        await asyncio.gather(self._task, *self._early, return_exceptions=True)
        for model, queue in self.queues.items():
            try:
                view = await asyncio.wait_for(self._store.capacity.report(
                    self.share_ids[model], self.holder, {}, capacity_shares.TTL), 1.0)
                slots = view["holders"].get(self.holder, {}).get("slots", 0)
                await asyncio.wait_for(self._store.capacity.leave(self.share_ids[model],
                                                                  self.holder, slots),
                                       1.0)
            except Exception:  # noqa: BLE001 - reclaimed once expired anyway
                pass

    async def everywhere(self, model: str) -> dict | None:
        """``model``'s queue across every gateway process sharing it, as of their last
        reports (at most ``INTERVAL`` old): ``{"processes", "slots", "busy", "waiting",
        "tiers": {tier: waiting}}``; None when this process does not share it."""
        if self._store is None or model not in self.queues:
            return None
        out = {"processes": 0, "slots": 0, "busy": 0, "waiting": 0, "tiers": {}}
        for holder in await self._store.capacity.live(self.share_ids[model]):
            out["processes"] += 1
            for field in ("slots", "busy", "waiting"):
                out[field] += int(holder.get(field, 0))
            for tier, n in holder.get("tiers", []):
                out["tiers"][tier] = out["tiers"].get(tier, 0) + int(n)
        return out

    async def turn(self, queue: FairQueue, req, principal,
                   on_queued: OnQueued | None) -> Ticket:
        """Wait for a slot (see the module); the ticket says which replica."""
        model = req.model
        tier = self.config.tiers.get(principal.tier)
        weight, priority = (tier.weight, tier.priority) if tier else (1.0, 0)
        cost = estimate_prompt_tokens(req) * self.config.queue.input_weight + \
            min(req.max_tokens or queue.typical_output, queue.typical_output * 4)
        try:
            ticket = queue.enter(principal.account_id, weight, priority, cost)
        except QueueFull:
            raise APIError(429, "You have too many requests waiting for this model "
                                f"(at most {queue.max_waiting_per_account}); wait for one "
                                "to start.", code="too_many_waiting",
                           headers={"Retry-After": "1"}) from None
        if ticket.granted:
            return ticket
        cfg = self.config.queue
        metrics.QUEUE_WAITING.labels(model, principal.tier).inc()
        tiers = self._waiting_tiers.setdefault(model, {})
        tiers[principal.tier] = tiers.get(principal.tier, 0) + 1
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
            tiers[principal.tier] -= 1
            metrics.QUEUE_WAIT.labels(model, principal.tier).observe(ticket.waited)

    def done(self, queue: FairQueue, ticket: Ticket, usage: Usage) -> None:
        """Free the slot; charge the account what it was really served."""
        cost = usage.prompt_tokens * self.config.queue.input_weight + usage.completion_tokens
        queue.settle(ticket, cost, usage.completion_tokens)
        model = queue.name
        if model in self._held and self._held[model] > queue.slots and \
                queue.slots_busy < self._held[model]:
            self._kick(model)        # a slot this process may not use: give it back now
