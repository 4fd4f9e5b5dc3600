"""Token-fair queuing of one model's requests over its replicas' sequence slots.

At peak a flat-rate service has more demand than GPU capacity; who gets the next free
sequence slot decides everyone's latency. This is the virtual token counter (VTC) of
Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024):

- **Capacity.** Each replica runs at most ``capacity`` sequences. A request that finds
  a free slot (and nobody waiting) takes it at once: no queue cost unsaturated.
- **Waiting happens here**, not in the model server's FIFO: a waiting request goes to
  whichever replica frees a slot first (no-regret dispatch).
- **Fair order.** Among accounts with waiting requests, the one with the smallest
  counter goes next; its own requests go in arrival order. An account's counter grows
  by the weighted tokens it is served (prompt tokens x input weight + generated
  tokens, divided by its tier's ``weight``), so a weight-2 tier gets twice the tokens
  of a weight-1 tier under backlog. A request's expected cost is charged when it gets
  its slot and corrected when it ends (``settle``): an account cannot take many slots
  in a row before its first request finishes.
- **Priority bands.** A tier's ``priority`` is strict: a waiting request of a higher
  band always goes before any of a lower band.
- **No hoarding.** An account that becomes backlogged starts at no less than the
  lowest counter among the accounts already backlogged (the VTC "lift"), so credit
  saved while idle cannot be spent in a burst.
- **Work-conserving.** No slot stays free while a request waits (``_dispatch`` runs
  whenever a slot frees or a request arrives).

Everything runs on one event loop, with no I/O: the clock is only read for the wait
statistics, so tests drive it.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import time
from typing import Callable


class QueueFull(Exception):
    """The account already has its maximum number of waiting requests."""


class Ticket:
    """One request's place: granted a replica slot (``replica``) at once or later."""

    __slots__ = ("queue", "account", "weight", "priority", "seq", "future", "replica",
                 "entered", "granted_at", "cost")

    def __init__(self, queue: "FairQueue", account: str, weight: float, priority: int,
                 seq: int, entered: float, cost: float) -> None:
        self.queue, self.account, self.weight, self.priority = queue, account, weight, priority
        self.seq, self.entered, self.cost = seq, entered, cost
        self.future: asyncio.Future | None = None
        self.replica: int | None = None
        self.granted_at: float | None = None

    @property
    def granted(self) -> bool:
        return self.replica is not None

    @property
    def waited(self) -> float:
        """Seconds spent waiting for the slot (0 for an immediate grant)."""
        return (self.granted_at if self.granted_at is not None
                else self.queue.clock()) - self.entered

    async def wait(self) -> int:
        """The replica index, once granted (cancel the awaiting task to leave)."""
        if self.replica is not None:
            return self.replica
        try:
            return await self.future
        except asyncio.CancelledError:
            self.leave()
            raise

    def position(self) -> int:
        """Requests that would go before this one now (0: next)."""
        return self.queue.position(self)

    def leave(self) -> None:
        """Give the place back: out of the queue, or the slot freed if it was granted."""
        self.queue.leave(self)


class FairQueue:
    """The slots of one model's replicas and the requests waiting for them."""

    def __init__(self, capacities: list[int], clock: Callable[[], float] = time.monotonic,
                 max_waiting_per_account: int = 0, name: str = "") -> None:
        self.name = name                 # the model's
        self.capacity = [max(0, int(c)) for c in capacities]
        self.busy = [0] * len(self.capacity)
        self.clock = clock
        self.max_waiting_per_account = max_waiting_per_account
        self.counters: dict[str, float] = {}
        self.backlog: dict[str, collections.deque[Ticket]] = {}
        self.waiting = 0
        self.served: dict[str, float] = collections.defaultdict(float)  # weighted tokens
        self.typical_output = 128.0      # generated tokens of a request (moving average)
        self.running: dict[str, int] = {}            # slots held, per account
        self.tiers: dict[str, tuple[float, int]] = {}  # weight, priority of those present
        self.on_backlog: Callable[[], None] | None = None  # an account started waiting
        self.linger = 0.0                # see demand()
        self._gone: dict[str, tuple[float, float, int]] = {}  # left at, weight, priority
        self._seq = itertools.count()

    # -- capacity ---------------------------------------------------------------------
    def set_capacity(self, replica: int, capacity: int) -> None:
        """A replica's capacity changed (a worker reported it): more slots serve waiters."""
        self.capacity[replica] = max(0, int(capacity))
        self._dispatch()

    @property
    def slots(self) -> int:
        return sum(self.capacity)

    @property
    def slots_busy(self) -> int:
        return sum(self.busy)

    def _free_replica(self) -> int | None:
        """The replica with the most free slots (ties: the first), or None."""
        best, free = None, 0
        for i, (cap, busy) in enumerate(zip(self.capacity, self.busy)):
            if cap - busy > free:
                best, free = i, cap - busy
        return best

    # -- requests ---------------------------------------------------------------------
    def enter(self, account: str, weight: float = 1.0, priority: int = 0,
              cost: float = 0.0) -> Ticket:
        """A request of ``account`` asks for a slot: granted at once when one is free and
        nobody waits, else queued (:class:`QueueFull` past the per-account cap).
        ``cost``: its expected weighted tokens, charged when it is granted (so the
        account's next request sees it at once); :meth:`settle` corrects it."""
        ticket = Ticket(self, account, weight if weight > 0 else 1.0, priority,
                        next(self._seq), self.clock(), cost)
        self.tiers[account] = (ticket.weight, priority)
        if not self.waiting:
            replica = self._free_replica()
            if replica is not None:
                self._grant(ticket, replica)
                return ticket
        queue = self.backlog.get(account)
        if queue is None:
            # The lift: a newly backlogged account starts no lower than the lowest
            # counter among those already waiting.
            floor = min((self.counters.get(a, 0.0) for a in self.backlog), default=None)
            if floor is not None and self.counters.get(account, 0.0) < floor:
                self.counters[account] = floor
            queue = self.backlog[account] = collections.deque()
        elif self.max_waiting_per_account and len(queue) >= self.max_waiting_per_account:
            raise QueueFull(account)
        ticket.future = asyncio.get_running_loop().create_future()
        queue.append(ticket)
        self.waiting += 1
        self._dispatch()
        if len(queue) == 1 and ticket.replica is None and self.on_backlog is not None:
            self.on_backlog()
        return ticket

    def demand(self) -> dict[str, tuple[int, float, int]]:
        """Each present account's requests (running and waiting), weight and priority;
        an account whose last request ended less than ``linger`` seconds ago counts as
        one (a user between two requests: their share stays where they send them)."""
        out = {}
        for account, (weight, priority) in self.tiers.items():
            count = self.running.get(account, 0) + len(self.backlog.get(account, ()))
            if count:
                out[account] = (count, weight, priority)
        if self._gone:
            since = self.clock() - self.linger
            for account, (left, weight, priority) in list(self._gone.items()):
                if left < since or account in out:
                    del self._gone[account]
                else:
                    out[account] = (1, weight, priority)
        return out

    def charge(self, account: str, weight: float, tokens: float) -> None:
        """Count ``tokens`` (already input-weighted) served to ``account``."""
        cost = tokens / (weight if weight > 0 else 1.0)
        self.counters[account] = self.counters.get(account, 0.0) + cost
        self.served[account] += cost

    def settle(self, ticket: Ticket, tokens: float, output_tokens: int) -> None:
        """The request is done: replace its expected cost by ``tokens`` (weighted) and
        learn the typical output length; then free its slot."""
        self.charge(ticket.account, ticket.weight, tokens - ticket.cost)
        ticket.cost = tokens
        self.typical_output += (output_tokens - self.typical_output) * 0.1
        self.release(ticket)

    def release(self, ticket: Ticket) -> None:
        """The request holding a slot is done: the slot goes to the next in line."""
        if ticket.replica is None:
            return
        replica, ticket.replica = ticket.replica, None
        self.busy[replica] -= 1
        self._forget(ticket.account, -1)
        self._dispatch()
        if not self.waiting and not self.slots_busy:
            self.counters.clear()        # nobody backlogged, nothing in flight: no history

    def leave(self, ticket: Ticket) -> None:
        if ticket.replica is not None:
            self.release(ticket)
            return
        queue = self.backlog.get(ticket.account)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            self.waiting -= 1
            if not queue:
                del self.backlog[ticket.account]
                self._forget(ticket.account, 0)
        if ticket.future is not None and not ticket.future.done():
            ticket.future.cancel()

    def position(self, ticket: Ticket) -> int:
        """About how many waiting requests go before ``ticket``: its account's older
        ones, and as many of each other account's, one more where that account is ahead
        (fair service interleaves accounts; counters move as tokens are served)."""
        queue = self.backlog.get(ticket.account)
        if ticket.replica is not None or queue is None:
            return 0
        own = sum(1 for t in queue if t.seq < ticket.seq)
        mine = self._rank(ticket.account)
        return own + sum(min(len(q), own + (self._rank(a) < mine))
                         for a, q in self.backlog.items() if a != ticket.account)

    def _rank(self, account: str) -> tuple:
        """Priority band, then counter; at equal counters the account with fewer
        requests waiting (a light user just lifted), then the oldest request."""
        queue = self.backlog[account]
        return (-queue[0].priority, self.counters.get(account, 0.0), len(queue),
                queue[0].seq)

    def _forget(self, account: str, running: int) -> None:
        """Count ``running`` more slots for ``account``; forget an account gone."""
        left = self.running.get(account, 0) + running
        if left > 0:
            self.running[account] = left
            return
        self.running.pop(account, None)
        if account not in self.backlog:
            tier = self.tiers.pop(account, None)
            if self.linger and tier is not None:
                self._gone[account] = (self.clock(), *tier)

    def _grant(self, ticket: Ticket, replica: int) -> None:
        ticket.replica = replica
        ticket.granted_at = self.clock()
        self.busy[replica] += 1
        self.running[ticket.account] = self.running.get(ticket.account, 0) + 1
        if ticket.cost:
            self.charge(ticket.account, ticket.weight, ticket.cost)
        if ticket.future is not None and not ticket.future.done():
            ticket.future.set_result(replica)

    def _dispatch(self) -> None:
        """Give every free slot to the next waiting request (work-conserving)."""
        while self.waiting:
            replica = self._free_replica()
            if replica is None:
                return
            account = min(self.backlog, key=self._rank)
            queue = self.backlog[account]
            ticket = queue.popleft()
            if not queue:
                del self.backlog[account]
            self.waiting -= 1
            if ticket.future is not None and ticket.future.cancelled():
                self._forget(account, 0)
                continue
            self._grant(ticket, replica)
