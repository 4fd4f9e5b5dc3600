"""Quota leases: admit from memory, take quota from the shared counters in blocks.

Each gateway process holds, per account and window (this minute, today), a *lease*: a
block of quota it has taken from the shared counter (``Counters.lease_quota``), and how
much of it its own requests have used. A request that fits in the lease is admitted
without any database round trip. When the lease runs low a new block is taken in the
background, sized from recent demand (``horizon`` seconds of it for a minute window,
``DAY_HORIZON_SCALE`` times that for a day; at most ``max_share`` of the limit); requests that arrive while a lease is empty wait for one coalesced take.
Unused quota goes back to the shared counter once the account has been idle for
``idle`` seconds, and with a new window the old lease simply lapses.

The shared counter never lets the leases of all processes add up to more than the
limit, so nothing is ever over-admitted. The price is under-admission: a request can be
refused while other processes still hold unused quota, at most their unused blocks, and
for at most ``idle`` seconds after they stop using it.

Concurrent-stream slots work the same way (``SlotPool``): a process leases slots and
reuses them for its streams.

**Holdings are fenced.** Every block and slot lease is recorded under this process (its
*holder* id) with an expiry, which the process renews while it lives (every
``lease_ttl / 3``, and its use of each quota window with it, every upkeep round). A
holding that has expired is taken back by the others after a further ``grace``
(``Counters``): what a dead process did not report as used returns within ``lease_ttl``.
A process that could not renew stops admitting on its holdings ``margin`` before they
expire, by its own monotonic clock; it renews before admitting on them again, and if they
were taken back meanwhile it records again only what it still uses (its running streams,
its use beyond its last report), even past the limit, so that nothing new is admitted for
that account until it is under its limit again.

**No request waits for a stalled database while it fits a live lease.** A request that
would queue behind a take (first come, first served) or wait for one stops waiting once
that take has been on its way for ``STALL`` (50 ms) and admits from the lease if it fits.

**Outage policy** (``[limits] outage_policy``). ``exact``: a request that needs the
database (its lease is spent, or fenced) waits for it, and gets 503 when it cannot be
reached. ``available``: while the database does not answer (a take or renewal on its way
for ``STALL``, or a recent failure), each process goes on admitting, per account and
window, up to the larger of its lease and its *share* of the limit: its part of the
account's use in that window (or the previous one) as it last saw the shared counter
(one process alone: all of it). Stream slots: up to the larger of the slots it holds and
the cap less the slots other processes held at its last contact. What it admitted beyond
its lease is charged to the shared counter once the database is back (even past the
limit: then nothing more is admitted in that window), and its streams are recorded.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.sdk import StoreError, WarnOnce

Amounts = dict[str, int]

RECHECK = 0.5          # after a refusal, refuse from memory for this long (seconds)
MAX_ROUNDS = 10        # takes one request may wait for while others' demand is served
DOWN_RETRY = 2.0       # after a database error, fail new takes at once for this long
DAY_HORIZON_SCALE = 30  # a day's window leases 30x the demand horizon of a minute's
LOW_WATER_TTL = 0.02   # how long a lease's refill level holds once demand is measured
MAX_GRACE = 2.0        # an expired holding is taken back this long after it is first seen
STALL = 0.05           # a database call on its way this long: requests stop waiting for it
MEMORY_SIZE = 100_000  # forgotten pools whose window and share are remembered (available)


@dataclass
class LeaseSettings:
    """How leases are sized and returned (from ``[limits]``)."""

    horizon: float = 2.0       # a new block covers this many seconds of recent demand
    max_share: float = 0.25    # ...but at most this share of the limit (beyond what waits)
    idle: float = 2.0          # an idle account's unused quota goes back after this long
    lease_ttl: float = 15.0    # a dead process's slots and unused quota return after this
    available: bool = False    # outage_policy "available" (see the module's docstring)

    @property
    def grace(self) -> float:
        """Between finding a holding expired and taking it back: its holder's time to
        renew once the database is back after an outage."""
        return min(MAX_GRACE, self.lease_ttl / 3)

    @property
    def hold(self) -> float:
        """How far ahead a holding's expiry is set (with ``grace``: ``lease_ttl``)."""
        return self.lease_ttl - self.grace

    @property
    def margin(self) -> float:
        """How long before its holdings expire a process that could not renew them stops
        admitting on them (by its own clock: room for clock drift between processes)."""
        return self.lease_ttl / 5

    @property
    def valid_for(self) -> float:
        """How long after a renewal was sent this process admits on its holdings."""
        return self.hold - self.margin

    @property
    def renew_every(self) -> float:
        return min(self.lease_ttl / 3, self.valid_for / 2)


@dataclass
class QuotaPool:
    """This process's lease on one account's shared window (e.g. its minute)."""

    pool_id: str
    limits: Amounts
    horizon_scale: float = 1.0                        # longer windows take longer blocks
    window: str = ""
    granted: Amounts = field(default_factory=dict)    # leased from the shared counter
    used: Amounts = field(default_factory=dict)       # admitted here (reconciled)
    others: Amounts = field(default_factory=dict)     # taken by other processes, last seen
    demand: Amounts = field(default_factory=dict)     # waiting for the take in flight
    need: Amounts = field(default_factory=dict)       # the first waiter's cost
    fetch: asyncio.Future | None = None
    refused_at: float = -math.inf
    last_active: float = field(default_factory=time.monotonic)
    inflight: int = 0                                 # admitted requests not yet settled
    waiting: int = 0                                  # requests waiting for a take
    rate: dict[str, float] = field(default_factory=dict)   # recent demand per second
    since_take: Amounts = field(default_factory=dict)        # used since the last take
    rate_mark: tuple[float, dict] = field(default_factory=lambda: (time.monotonic(), {}))
    peak_cost: Amounts = field(default_factory=dict)   # largest reservation this window
    low_water_levels: dict[str, float] = field(default_factory=dict)  # see low_water
    low_water_until: float = -math.inf
    holding: bool = False                             # recorded under this process
    reported: Amounts = field(default_factory=dict)   # the use it last recorded there
    confirmed: float = -math.inf                      # when its last take was sent
    fetch_started: float = math.inf                   # when the take in flight was sent
    share: dict[str, float] = field(default_factory=dict)  # of the account's use, last seen
    prior: Amounts = field(default_factory=dict)      # used in this window before this pool

    def roll(self, window: str) -> None:
        """Start afresh in a newer window (the old lease lapses with its window). Never
        backwards: a request stamped just before the boundary joins the current one."""
        if window > self.window:
            self.window = window
            self.granted, self.used, self.others, self.demand = {}, {}, {}, {}
            self.since_take, self.peak_cost = {}, {}
            self.refused_at = self.low_water_until = -math.inf
            self.holding, self.reported, self.confirmed = False, {}, -math.inf
            self.prior = {}            # the share stays: the estimate for the new window

    def fits(self, cost: Amounts) -> bool:
        """Whether ``cost`` fits in what the lease has left."""
        used, granted = self.used, self.granted
        for f, c in cost.items():
            if used.get(f, 0) + c > granted.get(f, 0):
                return False
        return True

    def use(self, cost: Amounts) -> None:
        """Count ``cost`` (negative: give back) as used here, and as recent demand."""
        used, spent, since = self.used, self.rate_mark[1], self.since_take
        for f, c in cost.items():
            used[f] = used.get(f, 0) + c
            spent[f] = spent.get(f, 0) + c
            since[f] = since.get(f, 0) + c

    def outage_room(self, cost: Amounts) -> bool:
        """Whether ``cost`` fits in what this process may admit while the database cannot
        be reached: its lease, or its share of each limit in the window."""
        used, granted, share, prior = self.used, self.granted, self.share, self.prior
        for f, c in cost.items():
            room = max(granted.get(f, 0),
                       int(share.get(f, 0.0) * self.limits[f]) - prior.get(f, 0))
            if used.get(f, 0) + c > room:
                return False
        return True

    def over_own(self, cost: Amounts) -> bool:
        """Whether this process's own use in the window alone leaves no room for ``cost``
        (certain without asking the shared counter)."""
        used, prior = self.used, self.prior
        return any(prior.get(f, 0) + used.get(f, 0) + c > self.limits[f]
                   for f, c in cost.items())

    def see_share(self) -> None:
        """This process's share of the account's use in the window, from the shared
        counter just seen (``others``: everything but this pool's lease)."""
        for f in self.limits:
            total = self.others.get(f, 0) + self.used.get(f, 0)
            if total > 0:
                self.share[f] = min(1.0, (self.prior.get(f, 0) + self.used.get(f, 0)) / total)

    def remaining(self, f: str) -> int:
        """What this account may still use in the window, as far as this process knows."""
        return max(0, self.limits[f] - self.others.get(f, 0) - self.used.get(f, 0))

    def reserve(self, cost: Amounts) -> None:
        """Admit ``cost`` from the lease (and remember the largest single reservation)."""
        for f, c in cost.items():
            if c > self.peak_cost.get(f, 0):
                self.peak_cost[f] = c
                self.low_water_until = -math.inf
        self.use(cost)
        self.inflight += 1

    def cushion(self) -> Amounts:
        """Room the lease keeps for the next request's reservation on top of those in
        flight: a reservation (prompt estimate + max_tokens) can be far larger than
        what requests end up using, which is all the demand rate sees."""
        return {f: self.peak_cost.get(f, 0) for f in self.limits}

    def low_water(self, settings: LeaseSettings, now: float) -> dict[str, float]:
        """Below how much unused lease to take the next block: early enough that the next
        request's reservation still fits while the take is on its way, with half the
        demand horizon to spare. Worked out again every ``LOW_WATER_TTL`` seconds once the
        demand rate is known (every request before that), and after a take, a new window
        or a new largest reservation."""
        if now >= self.low_water_until:
            ahead = self.prefetch(settings)
            cushion = self.cushion()
            self.low_water_levels = {f: cushion[f] + (a - cushion[f]) / 2
                                     for f, a in ahead.items() if a > 0}
            self.low_water_until = now + LOW_WATER_TTL if self.rate else now
        return self.low_water_levels

    def prefetch(self, settings: LeaseSettings) -> Amounts:
        """Beyond what waits, how much to take: recent (net) demand over the horizon
        plus the cushion, at most ``max_share`` of the limit."""
        now = time.monotonic()
        since, spent = self.rate_mark
        if now - since >= (0.25 if self.rate else 0.05):
            for f, amount in spent.items():
                inst = max(0.0, amount) / (now - since)
                self.rate[f] = inst if f not in self.rate else 0.5 * self.rate[f] + 0.5 * inst
            self.rate_mark = (now, {})
        cushion = self.cushion()
        # Until the first rate estimate, slow start: take as much as was used so far (the
        # lease doubles), and never less than what was used since the last take.
        start = self.used if not self.rate else {}
        return {f: int(min(max(self.rate.get(f, 0.0) * settings.horizon * self.horizon_scale,
                               self.since_take.get(f, 0), start.get(f, 0)) + cushion[f],
                           self.limits[f] * settings.max_share)) for f in self.limits}


@dataclass
class SlotPool:
    """This process's lease on one account's concurrent-stream slots."""

    subject: str
    held: int = 0
    in_use: int = 0
    demand: int = 0
    waiting: int = 0
    fetch: asyncio.Future | None = None
    refused_at: float = -math.inf
    last_active: float = field(default_factory=time.monotonic)
    confirmed: float = -math.inf      # when its last lease was sent
    fetch_started: float = math.inf
    cap: int = 0
    others: int = 0                   # slots other processes held, at the last lease

    def outage_room(self) -> bool:
        """Whether one more stream fits in what this process may run while the database
        cannot be reached: the slots it holds, or the cap less what others held."""
        return self.in_use < max(self.held, self.cap - self.others)


class QuotaLeases:
    """All quota and slot leases of this process, with their background upkeep."""

    def __init__(self, counters, settings: LeaseSettings, holder: str, log) -> None:
        self.counters = counters
        self.settings = settings
        self.holder = holder
        self.log = WarnOnce(log)
        self.pools: dict[str, QuotaPool] = {}
        self.slots: dict[str, SlotPool] = {}
        self._upkeep: asyncio.Task | None = None
        self._renewed = -math.inf        # when the last full renewal was sent
        self._renewed_ok = -math.inf     # ...the last one that succeeded
        self._renewing: asyncio.Future | None = None
        self._renewing_started = math.inf
        self.memory: OrderedDict[str, tuple] = OrderedDict()   # forgotten pools (available)
        self._valid_for = settings.valid_for
        self._down_until = 0.0
        self._failing = False          # the last database call failed (no success since)
        self._calls: dict[asyncio.Future, float] = {}   # takes on their way -> sent at

    # -- quota -------------------------------------------------------------------------
    def pool(self, pool_id: str, limits: Amounts, horizon_scale: float = 1.0) -> QuotaPool:
        """This process's lease on ``pool_id`` (made on first use), with current limits."""
        pool = self.pools.get(pool_id)
        if pool is None:
            pool = self.pools[pool_id] = QuotaPool(pool_id, dict(limits), horizon_scale)
            if pool_id in self.memory:
                pool.window, pool.prior, pool.share = self.memory.pop(pool_id)
        elif pool.limits != limits:
            pool.limits = dict(limits)
        if self._upkeep is None or self._upkeep.done():
            self._ensure_upkeep()
        return pool

    def try_acquire(self, pool: QuotaPool, cost: Amounts, window: str) -> str | None:
        """The steady state of :meth:`acquire`, without waiting: reserve ``cost`` from the
        lease if it fits and nobody waits for a block. None: call :meth:`acquire`."""
        if window > pool.window:
            pool.roll(window)
        if pool.waiting or not pool.fits(cost):
            return None
        now = time.monotonic()
        if now >= max(pool.confirmed, self._renewed_ok) + self._valid_for:
            return None                                  # fenced: renew first
        pool.last_active = now
        pool.reserve(cost)
        self._refill_early(pool)
        return pool.window

    async def acquire(self, pool: QuotaPool, cost: Amounts, window: str) -> str | None:
        """Reserve ``cost`` in ``window`` (or the pool's newer one): from the lease if it
        fits (no round trip), else after taking a new block. Returns the window it was
        reserved in (hand it back to ``settle``), or None when the limit is reached.
        Waits for the database at most ``STALL`` while the request fits its live lease
        (or, with ``available``, its outage room); see the module's docstring."""
        try:
            return await self._acquire(pool, cost, window)
        except StoreError:
            if self._outage_admit(pool, cost):
                return pool.window
            if pool.over_own(cost):
                return None             # its own use alone reaches the limit: 429, not 503
            raise

    async def _acquire(self, pool: QuotaPool, cost: Amounts, window: str) -> str | None:
        waited = False
        available = self.settings.available
        for _ in range(MAX_ROUNDS):
            pool.roll(window)
            now = pool.last_active = time.monotonic()
            stalled = self._stalled(pool, now)
            # First come, first served: a newcomer does not take what a block just taken
            # for the requests waiting on it was meant for (unless that take is stalled,
            # or failed: its waiters are about to get their 503).
            if (waited or not pool.waiting or stalled) and pool.fits(cost):
                if self.fenced(pool.confirmed):
                    if available and pool.outage_room(cost):
                        if self._unreachable(pool, now) or not await self._renewed(STALL):
                            self._outage_admit(pool, cost)
                            return pool.window
                    else:
                        await self.renew_now()
                    waited = True
                    continue
                pool.reserve(cost)
                self._refill_early(pool)
                return pool.window
            if now - pool.refused_at < RECHECK:
                return None
            if self._unreachable(pool, now) and self._outage_admit(pool, cost):
                return pool.window
            waited = True
            pool.waiting += 1
            try:
                fetch = self._take(pool, cost)
                if not await self._wait(fetch, pool.fetch_started, lambda: pool.fits(cost) or (
                        available and pool.outage_room(cost))):
                    continue                    # stalled: admit without it (next round)
                if not fetch.result():
                    return None
            finally:
                pool.waiting -= 1
        return None

    async def _wait(self, fetch: asyncio.Future, started: float, without) -> bool:
        """Wait for a take (or slot lease) on its way; only until it has been on its way
        ``STALL`` when ``without()`` says the request can be admitted without it. False
        when it was not waited for."""
        now = time.monotonic()
        left = 0 if self._unreachable(None, now) else started + STALL - now
        if left > 0 and not fetch.done():
            await asyncio.wait((fetch,), timeout=left)
        if not fetch.done():
            if without():
                return False
            if self._failing:       # this take finds out whether the database is back
                raise StoreError("database unavailable (a recent call failed)")
            await asyncio.wait((fetch,))
        return True

    def _stalled(self, pool, now: float) -> bool:
        """Whether the take (or slot lease) the pool's waiters wait for has been on its way
        ``STALL``, or failed (the database is known to be down)."""
        return now < self._down_until or (pool.fetch is not None
                                          and now - pool.fetch_started >= STALL)

    def _track(self, call: asyncio.Future, sent: float) -> None:
        self._calls[call] = sent
        call.add_done_callback(self._calls.pop)

    def _unreachable(self, pool, now: float) -> bool:
        """Whether the database does not answer: a recent failure, or a take (for any
        pool) or a renewal on its way for ``STALL``."""
        if now < self._down_until:
            return True
        if pool is not None and pool.fetch is not None and now - pool.fetch_started >= STALL:
            return True
        if any(now - sent >= STALL for sent in self._calls.values()):
            return True
        renewing = self._renewing
        return (renewing is not None and not renewing.done()
                and now - self._renewing_started >= STALL)

    async def _renewed(self, timeout: float) -> bool:
        """Renew this process's holdings, waiting at most ``timeout``: False when the
        renewal is still on its way (it goes on); StoreError when it failed."""
        self._check_database()
        if self._renewing is None or self._renewing.done():
            self._renew_shared_start(full=True)
        renewing = self._renewing
        await asyncio.wait((renewing,), timeout=timeout)
        if not renewing.done():
            return False
        renewing.result()
        return True

    def _outage_admit(self, pool: QuotaPool, cost: Amounts) -> bool:
        """``available``: admit ``cost`` within the pool's outage room (the database does
        not answer); it is charged to the shared counter once the database is back."""
        if not self.settings.available or not pool.outage_room(cost):
            return False
        pool.reserve(cost)
        self.log.warning("database unreachable: admitting within this process's share of "
                         "each limit (outage_policy = \"available\"); charged when it is back")
        return True

    def settle(self, pool: QuotaPool, window: str, reserved: Amounts, actual: Amounts) -> None:
        """Replace a reservation by what was really used (no round trip; a difference
        beyond the lease is charged to the shared counter by the upkeep)."""
        pool.inflight = max(0, pool.inflight - 1)
        if pool.window == window:
            pool.use({f: actual.get(f, 0) - c for f, c in reserved.items()})
        pool.last_active = time.monotonic()

    def fenced(self, confirmed: float) -> bool:
        """Whether a holding last confirmed at ``confirmed`` (or by the last full renewal)
        may no longer be admitted on without renewing it first."""
        return time.monotonic() >= max(confirmed, self._renewed_ok) + self._valid_for

    async def renew_now(self) -> None:
        """Renew every holding of this process (one renewal at a time; joins the one on
        its way). Raises StoreError at once while the database is known to be down, and
        after ``STALL`` while the last call failed (this one finds out if it is back)."""
        self._check_database()
        if self._failing:
            if not await self._renewed(STALL):
                raise StoreError("database unavailable (a recent call failed)")
            return
        await self._renew_shared(full=True)

    async def _renew_shared(self, full: bool) -> None:
        if self._renewing is None or self._renewing.done():
            self._renew_shared_start(full)
        await asyncio.shield(self._renewing)

    def _renew_shared_start(self, full: bool) -> None:
        self._renewing_started = time.monotonic()
        self._renewing = asyncio.ensure_future(self._renew(full))
        self._renewing.add_done_callback(_consume_error)

    def _check_database(self) -> None:
        """Fail at once (503) while the database is known to be unreachable, instead of
        making every request that needs a new block wait for the driver's timeout."""
        if time.monotonic() < self._down_until:
            raise StoreError("database unavailable (a recent quota take failed)")

    def _take(self, pool: QuotaPool, cost: Amounts) -> asyncio.Future:
        """Join (or start) the take for the pool's waiting requests; StoreError at once
        while the database is known to be down."""
        self._check_database()
        for f, c in cost.items():
            pool.demand[f] = pool.demand.get(f, 0) + c
        if pool.fetch is None:
            pool.need = dict(cost)
            pool.fetch_started = time.monotonic()
            pool.fetch = asyncio.ensure_future(self._fetch(pool))
            pool.fetch.add_done_callback(_consume_error)
            self._track(pool.fetch, pool.fetch_started)
        return pool.fetch

    def _refill_early(self, pool: QuotaPool) -> None:
        """Take the next block in the background before the lease runs out, so steady
        traffic never waits for the database."""
        if pool.fetch is not None:
            return
        now = time.monotonic()
        if now - pool.refused_at < RECHECK:
            return
        granted, used = pool.granted, pool.used
        for f, level in pool.low_water(self.settings, now).items():
            if granted.get(f, 0) - used.get(f, 0) < level:
                pool.need = {}
                pool.fetch_started = now
                pool.fetch = asyncio.ensure_future(self._fetch(pool))
                pool.fetch.add_done_callback(_consume_error)
                self._track(pool.fetch, now)
                return

    async def _fetch(self, pool: QuotaPool) -> bool:
        """Take a block for the pool's window. False only when the shared counter
        refused; True when it granted, or when the window ended meanwhile (the waiting
        requests then try again in the new one)."""
        window = pool.window
        try:
            await asyncio.sleep(0)            # let requests of this same moment join in
            demand, pool.demand = pool.demand, {}
            ahead = pool.prefetch(self.settings)
            want = {f: max(0, pool.used.get(f, 0) + demand.get(f, 0) + ahead.get(f, 0)
                           - pool.granted.get(f, 0)) for f in pool.limits}
            need = {f: max(0, pool.used.get(f, 0) + c - pool.granted.get(f, 0))
                    for f, c in pool.need.items()}
            sent, used = time.monotonic(), dict(pool.used)
            taken, shared, current = await self.counters.lease_quota(
                pool.pool_id, window, want, need, pool.limits, self.holder,
                self.settings.hold, self.settings.grace, used)
            self._failing = False
            if current > pool.window:        # another process's clock is ahead: join it
                pool.roll(current)
            elif pool.window != current:     # the window ended meanwhile: try afresh
                return True
            for f, amount in (taken or {}).items():
                pool.granted[f] = pool.granted.get(f, 0) + amount
            if taken:
                pool.since_take = {}
                pool.low_water_until = -math.inf
                pool.holding, pool.reported, pool.confirmed = True, used, sent
            if shared:
                pool.others = {f: max(0, shared.get(f, 0) - pool.granted.get(f, 0))
                               for f in pool.limits}
                pool.see_share()
            if taken is None:
                pool.refused_at = time.monotonic()
                return False
            return True
        except StoreError:
            self._down_until = time.monotonic() + DOWN_RETRY
            self._failing = True
            raise
        finally:
            pool.fetch = None

    # -- stream slots --------------------------------------------------------------------
    def slot_pool(self, subject: str) -> SlotPool:
        """This process's stream-slot lease on ``subject`` (made on first use)."""
        pool = self.slots.get(subject)
        if pool is None:
            pool = self.slots[subject] = SlotPool(subject)
        if self._upkeep is None or self._upkeep.done():
            self._ensure_upkeep()
        return pool

    def try_acquire_slot(self, pool: SlotPool) -> bool:
        """The steady state of :meth:`acquire_slot`: reuse a slot this process holds, if
        one is free, nobody waits and the holding is not fenced. False: call
        :meth:`acquire_slot`."""
        if pool.waiting or pool.in_use >= pool.held:
            return False
        now = time.monotonic()
        if now >= max(pool.confirmed, self._renewed_ok) + self._valid_for:
            return False
        pool.in_use += 1
        pool.last_active = now
        return True

    async def acquire_slot(self, pool: SlotPool, cap: int) -> bool:
        """One stream slot of ``cap``: reuse one this process holds, or lease more (see
        the module's docstring for what it waits for and the outage policy)."""
        pool.cap = cap
        try:
            return await self._acquire_slot(pool, cap)
        except StoreError:
            if self._slot_outage_admit(pool):
                return True
            if pool.in_use >= cap:
                return False            # its own streams alone fill the cap: 429, not 503
            raise

    async def _acquire_slot(self, pool: SlotPool, cap: int) -> bool:
        waited = False
        available = self.settings.available
        for _ in range(MAX_ROUNDS):
            now = pool.last_active = time.monotonic()
            stalled = self._stalled(pool, now)
            if (waited or not pool.waiting or stalled) and pool.in_use < pool.held:
                if self.fenced(pool.confirmed):
                    if available and pool.outage_room():
                        if self._unreachable(pool, now) or not await self._renewed(STALL):
                            return self._slot_outage_admit(pool)
                    else:
                        await self.renew_now()
                    waited = True
                    continue
                pool.in_use += 1
                return True
            if now - pool.refused_at < RECHECK:
                return False
            if self._unreachable(pool, now) and self._slot_outage_admit(pool):
                return True
            self._check_database()
            waited = True
            pool.demand += 1
            pool.waiting += 1
            if pool.fetch is None:
                pool.fetch_started = now
                pool.fetch = asyncio.ensure_future(self._fetch_slots(pool, cap))
                pool.fetch.add_done_callback(_consume_error)
                self._track(pool.fetch, now)
            fetch = pool.fetch
            try:
                if not await self._wait(fetch, pool.fetch_started, lambda: (
                        pool.in_use < pool.held or (available and pool.outage_room()))):
                    continue
                if not fetch.result():
                    return False
            finally:
                pool.waiting -= 1
        return False

    def _slot_outage_admit(self, pool: SlotPool) -> bool:
        if not self.settings.available or not pool.outage_room():
            return False
        pool.in_use += 1
        self.log.warning("database unreachable: admitting streams within this process's "
                         "view of the free slots (outage_policy = \"available\"); recorded "
                         "when it is back")
        return True

    def release_slot(self, pool: SlotPool) -> None:
        pool.in_use = max(0, pool.in_use - 1)
        pool.last_active = time.monotonic()

    async def _fetch_slots(self, pool: SlotPool, cap: int) -> bool:
        try:
            await asyncio.sleep(0)
            demand, pool.demand = pool.demand, 0
            sent = time.monotonic()
            seen: dict = {}
            got = await self.counters.lease_slots(pool.subject, self.holder, demand, 1, cap,
                                                  self.settings.hold, self.settings.grace,
                                                  seen)
            self._failing = False
            pool.held += got
            if "held" in seen:
                pool.others = max(0, seen["held"] - pool.held)
            if got:
                pool.confirmed = sent
            if not got:
                pool.refused_at = time.monotonic()
            return bool(got)
        except StoreError:
            self._down_until = time.monotonic() + DOWN_RETRY
            self._failing = True
            raise
        finally:
            pool.fetch = None

    # -- upkeep --------------------------------------------------------------------------
    def _ensure_upkeep(self) -> None:
        if self._upkeep is None or self._upkeep.done():
            self._upkeep = asyncio.ensure_future(self._run_upkeep())

    async def _run_upkeep(self) -> None:
        period = max(0.05, min(self.settings.idle / 2, self.settings.lease_ttl / 3))
        while self.pools or self.slots:
            await asyncio.sleep(period)
            try:
                await self.upkeep()
            except Exception as exc:  # noqa: BLE001 - try again next round
                self.log.warning("quota lease upkeep failed (%s); retrying",
                                 type(exc).__name__)

    async def _renew(self, full: bool) -> None:
        """Renew the holdings of this process (``full``: all of them, else the quota
        windows whose use changed since it was last reported), reporting its use; restore
        what was taken back meanwhile (see the module's docstring)."""
        sent = time.monotonic()
        if full:
            self._renewed = sent
        # A take on its way reports the use itself (the two must not cross): only renewed.
        pools = {pid: (p.window, dict(p.used) if p.fetch is None else {})
                 for pid, p in self.pools.items()
                 if p.holding and (full or (p.fetch is None and p.used != p.reported))}
        slots = {s for s, p in self.slots.items() if p.held > 0} if full else set()
        try:
            lost_pools, lost_slots = await self.counters.renew(
                self.holder, self.settings.hold, slots, pools)
            for pool_id, (window, used) in pools.items():
                pool = self.pools.get(pool_id)
                if pool is None or pool.window != window:
                    continue
                if pool_id in lost_pools:
                    await self._restore_pool(pool)
                    continue
                if used:
                    pool.reported = used
                pool.confirmed = max(pool.confirmed, sent)
            for subject in lost_slots:
                slots_pool = self.slots.get(subject)
                if slots_pool is not None:
                    await self._restore_slots(slots_pool)
        except StoreError:
            self._down_until = time.monotonic() + DOWN_RETRY
            self._failing = True
            raise
        if full:
            self._renewed_ok = sent
        self._down_until = 0.0
        self._failing = False

    async def _restore_pool(self, pool: QuotaPool) -> None:
        """The pool's holding was taken back while this process lived: what it used beyond
        what it had reported is charged now, and it holds exactly its use (no more
        admissions on the old block)."""
        used, granted = dict(pool.used), pool.granted
        charge = {f: used.get(f, 0) - min(pool.reported.get(f, 0), granted.get(f, 0))
                  for f in pool.limits}
        sent = time.monotonic()
        pool.granted = dict(used)
        pool.holding = await self.counters.restore_quota(
            pool.pool_id, pool.window, self.holder, charge, used, self.settings.hold)
        if not pool.holding:
            return                           # its window has passed: nothing to restore
        pool.reported, pool.confirmed = used, sent
        self.log.warning("quota leases of this process were taken back while it could not "
                         "reach the database; it admits no more on them and charged %s "
                         "used since its last report", charge)

    async def _restore_slots(self, pool: SlotPool) -> None:
        """The pool's slots were taken back while this process lived: its running streams
        are recorded again (even past the cap), the rest is gone."""
        sent = time.monotonic()
        if pool.in_use:
            await self.counters.restore_slots(pool.subject, self.holder, pool.in_use,
                                              self.settings.hold)
            pool.confirmed = sent
        gone, pool.held = pool.held - pool.in_use, pool.in_use
        self.log.warning("stream slots of this process were taken back while it could not "
                         "reach the database: %d given up, %d running streams recorded again",
                         gone, pool.in_use)

    async def upkeep(self, everything: bool = False) -> None:
        """Renew this process's holdings, charge overuse, give back idle accounts' unused
        quota and slots, forget what is settled. ``everything``: give all back now
        (shutdown)."""
        now = time.monotonic()
        if not everything:
            full = (now - self._renewed >= self.settings.renew_every
                    or self._renewed_ok < self._renewed)      # the last one failed: again
            await self._renew_shared(full)
        idle = self.settings.idle
        for pool_id, pool in list(self.pools.items()):
            if pool.fetch is not None:
                continue
            spare = {f: pool.granted.get(f, 0) - pool.used.get(f, 0) for f in pool.limits}
            over = {f: -s for f, s in spare.items() if s < 0}
            quiet = everything or now - pool.last_active >= idle
            back = {f: -s for f, s in spare.items() if s > 0} if quiet else {}
            forget = quiet and pool.inflight == 0
            if not pool.holding and over and not everything:
                # Admitted without a lease while the database was away (available): charge
                # it now, even past the limit, and hold it.
                used = dict(pool.used)
                sent = time.monotonic()
                if await self.counters.charge_quota(pool_id, pool.window, self.holder, over,
                                                    used, self.settings.hold):
                    pool.holding, pool.reported, pool.confirmed = True, used, sent
                pool.granted = {f: max(pool.granted.get(f, 0), used.get(f, 0))
                                for f in pool.limits}
                over = {}
            if pool.holding and (over or back or forget):
                used = dict(pool.used)
                if not await self.counters.adjust_quota(pool_id, pool.window,
                                                        {**over, **back}, self.holder,
                                                        used, forget):
                    await self._restore_pool(pool)     # taken back meanwhile (or passed)
                    continue
                pool.reported = used
                if forget:
                    pool.holding = False
                for f, s in spare.items():
                    if s < 0 or quiet:
                        pool.granted[f] = pool.used.get(f, 0)
            if forget and self.pools.get(pool_id) is pool:
                del self.pools[pool_id]
                if self.settings.available and not everything:
                    self._remember(pool)
        for subject, slots in list(self.slots.items()):
            if slots.fetch is not None:
                continue
            if slots.in_use > slots.held and not everything:
                # Streams admitted beyond its holding while the database was away
                # (available): recorded now, even past the cap.
                sent = time.monotonic()
                await self.counters.restore_slots(subject, self.holder,
                                                  slots.in_use - slots.held, self.settings.hold)
                slots.held, slots.confirmed = slots.in_use, sent
            quiet = everything or now - slots.last_active >= idle
            if quiet and slots.held > slots.in_use:
                await self.counters.return_slots(subject, self.holder,
                                                 slots.held - slots.in_use, slots.held)
                slots.held = slots.in_use
            if slots.held == 0 and slots.in_use == 0 and self.slots.get(subject) is slots:
                del self.slots[subject]

    def _remember(self, pool: QuotaPool) -> None:
        """Keep a forgotten pool's window, use and share (a few hundred bytes, at most
        ``MEMORY_SIZE`` of them): its outage room if the account comes back while the
        database is away."""
        prior = {f: pool.prior.get(f, 0) + pool.used.get(f, 0) for f in pool.limits}
        self.memory[pool.pool_id] = (pool.window, prior, dict(pool.share))
        self.memory.move_to_end(pool.pool_id)
        while len(self.memory) > MEMORY_SIZE:
            self.memory.popitem(last=False)

    async def close(self) -> None:
        """Give back everything this process holds (at shutdown)."""
        if self._upkeep is not None:
            self._upkeep.cancel()
        await self.upkeep(everything=True)


def _consume_error(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()
