"""Built-in limiter plugin: subscription tiers from the config file.

Per tier: requests/minute, tokens/minute, tokens/day, concurrent streams, max
``max_tokens``, max prompt size, allowed models. Zero means unlimited; a tier with
all zeros is the permissive default.

Windows are fixed (UTC minute, UTC day). Admission reserves 1 request and a token
estimate (prompt estimate + max_tokens) from this process's quota leases
(``plugins.limits.quota``): in steady state that is memory only, and the shared
counters in MongoDB are touched once per block of quota, not per request. Settlement
replaces the token estimate by the real usage and frees the stream slot, in memory too.
The limits hold exactly across processes: the leases of all processes never add up to
more than a limit. While the database does not answer, ``[limits] outage_policy`` says
what happens once a lease is spent or fenced: 503 (``exact``), or admission within each
process's share of the limit, charged when the database is back (``available``, the
default; ``plugins.limits.quota``).

Per-key limits (requests/tokens per minute, tokens per day, set on the key and carried by
the cached principal) are pools of their own (``q:m:key:<key id>``, ``q:d:key:<key id>``)
reserved in the same all-or-nothing step as the account's; the account's tier limits
still apply, so a key never gets more than its tier. A key's model list narrows the
tier's. Which tier an account has and which models it may use is ``TierPolicy``
(``sdk.TierPolicy``), the same object ``/v1/models`` asks.

Model lists are authorisation, not limits: with ``[limits] enabled = false`` the limiter
is still registered and still refuses a model outside the tier's or the key's list, and
still applies the key's own limits (which its owner set); only the tiers' limits are off.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway import sdk
from gateway.sdk import (KEY_LIMITS, Admission, APIError, GenerationRequest, Principal,
                         StoreError, TierConfig, TierPolicy, Usage, WarnOnce,
                         estimate_prompt_tokens, hookimpl)
from plugins.limits.quota import DAY_HORIZON_SCALE, LeaseSettings, QuotaLeases

log = logging.getLogger("allyoucantoken.limits")
warn = WarnOnce(log)
DEFAULT_COMPLETION_ESTIMATE = 1024
NO_TIER_LIMITS = TierConfig()     # the tiers' limits with [limits] enabled = false


def _fmt(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 2h3m4s."""
    s = max(0, int(seconds + 0.999))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{sec}s"


def _deny(limit: str, message: str, status: int = 429, retry_after: float = 0.0,
          param: str | None = None, headers: dict | None = None) -> Admission:
    return Admission(allowed=False, limiter="tiers", limit=limit, status=status,
                     message=message, retry_after=retry_after,
                     param=param, headers=headers or {})


@dataclass
class Window:
    """One quota window a request is counted against: a pool of the quota leases (the
    account's or the key's, per minute or per day) and what the request costs in it."""

    pool_id: str                        # q:m:<account>, q:d:<account>, q:m:key:<key>, ...
    window: str                         # the window's id: UTC minute or day
    costs: dict[str, tuple[int, int]]   # field (requests, tokens) -> (cost, limit)
    reset: float                        # seconds until the window ends
    names: dict[str, str]               # field -> the limit's name, e.g. tokens_per_minute
    limits: dict[str, int] | None = None   # field -> limit (from costs if unset)

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = {f: lim for f, (_, lim) in self.costs.items()}


_HEADER_NAMES = {f: (f"x-ratelimit-limit-{f}", f"x-ratelimit-remaining-{f}",
                     f"x-ratelimit-reset-{f}") for f in ("requests", "tokens")}
_MINUTE_NAMES = {"requests": "requests_per_minute", "tokens": "tokens_per_minute"}
_DAY_NAMES = {"tokens": "tokens_per_day"}


class WindowClock:
    """The current UTC minute and day as window ids (``%Y%m%d%H%M``, ``%Y%m%d``, the
    format of the shared counters), formatted once a minute instead of per request."""

    __slots__ = ("_minute", "minute_id", "day_id", "_day_end")

    def __init__(self) -> None:
        self._minute = None
        self.minute_id = self.day_id = ""
        self._day_end = 0

    def read(self) -> tuple[float, float]:
        """Update the ids to now; returns the seconds left in the minute and in the day."""
        now = time.time()
        minute = int(now // 60)
        if minute != self._minute:
            start = datetime.fromtimestamp(minute * 60, UTC)
            self.minute_id, self.day_id = f"{start:%Y%m%d%H%M}", f"{start:%Y%m%d}"
            self._day_end = (minute * 60 // 86400 + 1) * 86400
            self._minute = minute
        return (minute + 1) * 60 - now, self._day_end - now


class TierLimiter(sdk.Limiter):
    """Exact per-account limits shared by every gateway process through MongoDB."""

    name = "tiers"

    def __init__(self, config, store) -> None:
        self.config = config
        self.policy = TierPolicy.from_config(config)
        lim = config.limits
        self.leases = QuotaLeases(store.counters,
                                  LeaseSettings(lim.lease_horizon, lim.lease_max_share,
                                                lim.lease_idle, lim.lease_ttl,
                                                lim.outage_policy == "available"),
                                  "proc_" + secrets.token_hex(8), log)
        self.clock = WindowClock()
        self._plans: dict[int, tuple] = {}
        self.tier_limits = lim.enabled      # off: model lists and per-key limits only

    def tier_for(self, principal: Principal):
        """The caller's tier (``TierPolicy.tier_for``)."""
        return self.policy.tier_for(principal)

    async def admit(self, principal: Principal, req: GenerationRequest) -> Admission:
        tier = self.tier_for(principal)
        if not self.policy.tier_allows(tier, req.model):
            return _deny("model_not_allowed", f"Your tier ({principal.tier}) does not include "
                         f"the model `{req.model}`.", status=403, param="model")
        if not self.policy.key_allows(principal, req.model):
            return _deny("model_not_allowed", f"This API key is not allowed to use the model "
                         f"`{req.model}` (allowed: {', '.join(principal.allowed_models)}).",
                         status=403, param="model")
        if not self.tier_limits:
            tier = NO_TIER_LIMITS
        max_tokens = req.max_tokens
        if tier.max_tokens:
            if max_tokens is None:
                max_tokens = tier.max_tokens
            elif max_tokens > tier.max_tokens:
                if tier.max_tokens_policy == "clamp":
                    max_tokens = tier.max_tokens
                else:
                    return _deny("max_tokens", f"max_tokens is {max_tokens}, but your tier "
                                 f"allows at most {tier.max_tokens}.", status=400,
                                 param="max_tokens")
        counted = (tier.requests_per_minute or tier.tokens_per_minute or tier.tokens_per_day
                   or tier.concurrent_streams or principal.key_limits)
        if not (counted or tier.max_prompt_chars):
            # nothing to count or check: the prompt estimate is not needed
            return Admission(limiter=self.name, max_tokens=max_tokens)
        prompt_estimate = estimate_prompt_tokens(req)
        if tier.max_prompt_chars and prompt_estimate * 4 > tier.max_prompt_chars:
            return _deny("prompt_too_large", f"The prompt is larger than your tier allows "
                         f"({tier.max_prompt_chars} characters).", status=400,
                         param={"chat": "messages", "embedding": "input"}.get(req.kind, "prompt"))
        if not counted:
            return Admission(limiter=self.name, max_tokens=max_tokens)  # nothing to count
        cost = prompt_estimate + (max_tokens or DEFAULT_COMPLETION_ESTIMATE)
        return await self._reserve(principal, tier, cost, max_tokens)

    def _plan(self, tier) -> tuple:
        """The tier's windows as (pool prefix, per day, limits, names), worked out once per
        tier (tiers are a read-only part of the config)."""
        entry = self._plans.get(id(tier))
        if entry is None or entry[0] is not tier:
            plan = []
            minute = {f: lim for f, lim in (("requests", tier.requests_per_minute),
                                            ("tokens", tier.tokens_per_minute)) if lim}
            if minute:
                plan.append(("q:m:", False, minute, _MINUTE_NAMES))
            if tier.tokens_per_day:
                plan.append(("q:d:", True, {"tokens": tier.tokens_per_day}, _DAY_NAMES))
            entry = self._plans[id(tier)] = (tier, tuple(plan))
        return entry[1]

    async def _reserve(self, principal: Principal, tier, cost: int,
                       max_tokens: int | None) -> Admission:
        minute_reset, day_reset = self.clock.read()
        minute_id, day_id = self.clock.minute_id, self.clock.day_id
        acct = principal.account_id
        windows: list[Window] = []
        for prefix, per_day, limits, names in self._plan(tier):
            windows.append(Window(prefix + acct, day_id if per_day else minute_id,
                                  {f: (1 if f == "requests" else cost, lim)
                                   for f, lim in limits.items()},
                                  day_reset if per_day else minute_reset, names, limits))
        if principal.key_limits and principal.key_id:
            key = principal.key_id
            rpm, tpm, tpd = (principal.key_limit(n) for n in KEY_LIMITS)
            key_minute = {**({"requests": (1, rpm)} if rpm else {}),
                          **({"tokens": (cost, tpm)} if tpm else {})}
            if key_minute:
                windows.append(Window(f"q:m:key:{key}", minute_id, key_minute,
                                      minute_reset, {"requests": "key_requests_per_minute",
                                                     "tokens": "key_tokens_per_minute"}))
            if tpd:
                windows.append(Window(f"q:d:key:{key}", day_id,
                                      {"tokens": (cost, tpd)}, day_reset,
                                      {"tokens": "key_tokens_per_day"}))
        for w in windows:
            names = w.names
            for field, (c, lim) in w.costs.items():
                if c > lim:
                    whose = ("this key's " + names[field][4:].replace('_', ' ')
                             if names[field].startswith("key_")
                             else "your tier's " + names[field].replace('_', ' '))
                    return _deny(names[field], f"This request needs about {c} tokens, more "
                                 f"than {whose} limit of {lim}. Lower max_tokens.",
                                 retry_after=0.0)
        taken = []     # (pool, window, cost) reserved so far
        slot = None
        try:
            leases = self.leases
            for w in windows:
                pool = leases.pool(w.pool_id, w.limits,
                                   DAY_HORIZON_SCALE if w.pool_id.startswith("q:d:") else 1)
                want = {f: c for f, (c, _) in w.costs.items()}
                # From the lease in memory (steady state), else wait for a block.
                reserved_in = leases.try_acquire(pool, want, w.window) or \
                    await leases.acquire(pool, want, w.window)
                if reserved_in is None:
                    self._undo(taken, slot)
                    return self._refused(pool, w, windows)
                taken.append((pool, reserved_in, want))
            if tier.concurrent_streams:
                pool = leases.slot_pool("slots:" + acct)
                if not (leases.try_acquire_slot(pool) or
                        await leases.acquire_slot(pool, tier.concurrent_streams)):
                    self._undo(taken, slot)
                    return _deny("concurrent_streams", "Too many concurrent streams: your "
                                 f"tier allows {tier.concurrent_streams}. Try again when one "
                                 "has finished.", retry_after=1.0,
                                 headers=self._headers(windows, taken))
                slot = pool
        except StoreError as exc:
            self._undo(taken, slot)
            warn.warning("quota lease failed: database unavailable (%s)", type(exc).__name__)
            raise APIError(503, "The service is temporarily unavailable; please retry shortly.",
                           code="service_unavailable", headers={"Retry-After": "5"}) from None
        return Admission(limiter=self.name, max_tokens=max_tokens,
                         headers=self._headers(windows, taken),
                         reservation={"taken": taken, "slot": slot})

    def _refused(self, pool, refused: Window, windows: list[Window]) -> Admission:
        costs, reset = refused.costs, refused.reset
        field = next((f for f, (c, _) in costs.items() if pool.remaining(f) < c),
                     next(iter(costs)))
        c, lim = costs[field]
        name = refused.names[field]
        what = "requests" if field == "requests" else "tokens"
        label = ("this API key's " + name[4:] if name.startswith("key_") else name)
        return _deny(name, f"Rate limit reached for {label.replace('_', ' ')}: limit {lim}; "
                     f"this request needs {c} {what}. Try again in {_fmt(reset)}.",
                     retry_after=reset, headers=self._headers(windows, []))

    def _headers(self, windows: list[Window], taken) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers from the minute window (as this process sees it:
        its own use exactly, other processes' as of its last contact with the counter)."""
        if not windows or not windows[0].pool_id.startswith("q:m:"):
            return {}
        first = windows[0]
        pool = self.leases.pools.get(first.pool_id)
        if pool is not None and pool.window != first.window:
            pool = None
        reset = _fmt(first.reset)
        headers: dict[str, str] = {}
        for name, limit in first.limits.items():
            limit_h, remaining_h, reset_h = _HEADER_NAMES[name]
            headers[limit_h] = str(limit)
            headers[remaining_h] = str(limit if pool is None else pool.remaining(name))
            headers[reset_h] = reset
        return headers

    def _undo(self, taken, slot) -> None:
        for pool, window, cost in taken:
            self.leases.settle(pool, window, cost, {})
        if slot is not None:
            self.leases.release_slot(slot)

    async def settle(self, admission: Admission, usage: Usage, outcome: str) -> None:
        """Replace the token estimate by the real usage and free the slot (in memory).
        A request another limiter refused never ran: its request goes back too."""
        res = admission.reservation
        for pool, window, cost in res.get("taken", ()):
            actual = {}
            if "tokens" in cost:
                actual["tokens"] = usage.total_tokens
            if "requests" in cost and outcome != "denied":
                actual["requests"] = cost["requests"]
            self.leases.settle(pool, window, cost, actual)
        if res.get("slot") is not None:
            self.leases.release_slot(res["slot"])

    async def remaining(self, account_id: str, tier_name: str, key_id: str | None = None,
                        key_limits: dict | None = None) -> dict:
        """What the account (and one key) may still use in this minute and today: the
        shared counters (one read per window; not for the request path), corrected by
        this process's own lease (unused quota it holds, use not yet charged). Blocks
        other processes hold unused count as used until they give them back
        (``lease_idle``). ``None`` for a window without a limit."""
        tier = self.policy.tier(tier_name) if self.tier_limits else NO_TIER_LIMITS
        self.clock.read()
        minute, day = self.clock.minute_id, self.clock.day_id
        key_limits = key_limits or {}
        plan = [("account", f"q:m:{account_id}", minute, {
                    "requests_per_minute": ("requests", tier.requests_per_minute),
                    "tokens_per_minute": ("tokens", tier.tokens_per_minute)}),
                ("account", f"q:d:{account_id}", day, {
                    "tokens_per_day": ("tokens", tier.tokens_per_day)})]
        if key_id:
            plan += [("key", f"q:m:key:{key_id}", minute, {
                         "requests_per_minute": ("requests",
                                                 key_limits.get("requests_per_minute", 0)),
                         "tokens_per_minute": ("tokens",
                                               key_limits.get("tokens_per_minute", 0))}),
                     ("key", f"q:d:key:{key_id}", day, {
                         "tokens_per_day": ("tokens", key_limits.get("tokens_per_day", 0))})]
        out: dict = {"account": {}, "key": {}} if key_id else {"account": {}}
        for who, pool_id, window, names in plan:
            if not any(lim for _, lim in names.values()):
                for name in names:
                    out[who][name] = None
                continue
            shared = await self.leases.counters.quota_values(pool_id, window)
            pool = self.leases.pools.get(pool_id)
            for name, (f, lim) in names.items():
                if not lim:
                    out[who][name] = None
                    continue
                used = shared.get(f, 0)
                if pool is not None and pool.window == window:   # own lease: exact
                    used += pool.used.get(f, 0) - pool.granted.get(f, 0)
                out[who][name] = {"limit": lim, "used": max(0, used),
                                  "remaining": max(0, lim - max(0, used))}
        return out

    async def close(self) -> None:
        """Give back this process's unused quota and stream slots (at shutdown)."""
        await self.leases.close()


@hookimpl
def register_limiters(register, config, store):
    """Register the tier limiter (permissive when the tier sets no limits; with
    ``[limits] enabled = false`` it enforces model lists and per-key limits only)."""
    register(TierLimiter(config, store))
