"""Built-in limiter plugin: subscription tiers from the config file.

Per tier: requests/minute, tokens/minute, tokens/day, concurrent streams, max
``max_tokens``, max prompt size, allowed models. Zero means unlimited; a tier with
all zeros is the permissive default.

Windows are fixed (UTC minute, UTC day). Admission reserves 1 request and a token
estimate (prompt estimate + max_tokens) with conditional counters in MongoDB (see
``gateway.store.counters``): one document per window, so requests/minute and
tokens/minute cost a single round trip, tokens/day another. A concurrent-stream lease
is taken at the same time (one conditional push); admission therefore costs one round
trip of latency. Settlement refunds the unused token reservation and
releases the lease.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from gateway.hookspecs import hookimpl
from gateway.streaming import estimate_prompt_tokens
from gateway.types import Admission, GenerationRequest, Principal, Usage

log = logging.getLogger("allyoucantoken.limits")
DEFAULT_COMPLETION_ESTIMATE = 1024


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
                     reservation={"param": param} if param else {}, headers=headers or {})


class TierLimiter:
    """Exact per-account limits shared by every gateway process through MongoDB."""

    name = "tiers"

    def __init__(self, config, store) -> None:
        self.config = config
        self.store = store
        self.lease_ttl = config.limits.lease_ttl
        self._leases: dict[str, str] = {}   # live lease id -> subject, renewed in the background
        self._renewer: asyncio.Task | None = None

    def tier_for(self, principal: Principal):
        return self.config.tiers.get(principal.tier) or \
            self.config.tiers[self.config.limits.default_tier]

    async def admit(self, principal: Principal, req: GenerationRequest) -> Admission:
        tier = self.tier_for(principal)
        if "*" not in tier.models and req.model not in tier.models:
            return _deny("model_not_allowed", f"Your tier ({principal.tier}) does not include "
                         f"the model `{req.model}`.", status=403, param="model")
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
        prompt_estimate = estimate_prompt_tokens(req)
        if tier.max_prompt_chars and prompt_estimate * 4 > tier.max_prompt_chars:
            return _deny("prompt_too_large", f"The prompt is larger than your tier allows "
                         f"({tier.max_prompt_chars} characters).", status=400,
                         param="messages" if req.kind == "chat" else "prompt")
        if not (tier.requests_per_minute or tier.tokens_per_minute or tier.tokens_per_day
                or tier.concurrent_streams):
            return Admission(limiter=self.name, max_tokens=max_tokens)  # nothing to count
        cost = prompt_estimate + (max_tokens or DEFAULT_COMPLETION_ESTIMATE)
        return await self._reserve(principal, tier, cost, max_tokens)

    async def _reserve(self, principal: Principal, tier, cost: int,
                       max_tokens: int | None) -> Admission:
        now = datetime.now(UTC)
        acct = principal.account_id
        minute = now.replace(second=0, microsecond=0)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        minute_reset = (minute + timedelta(minutes=1) - now).total_seconds()
        day_reset = (day + timedelta(days=1) - now).total_seconds()
        # One document per window; every limit of a window is taken in one round trip.
        windows = []   # (window id, {field: (cost, limit)}, expires, reset, limit names)
        per_minute = {}
        if tier.requests_per_minute:
            per_minute["requests"] = (1, tier.requests_per_minute)
        if tier.tokens_per_minute:
            per_minute["tokens"] = (cost, tier.tokens_per_minute)
        if per_minute:
            windows.append((f"m:{acct}:{minute:%Y%m%d%H%M}", per_minute,
                            minute + timedelta(minutes=2), minute_reset,
                            {"requests": "requests_per_minute", "tokens": "tokens_per_minute"}))
        if tier.tokens_per_day:
            windows.append((f"d:{acct}:{day:%Y%m%d}", {"tokens": (cost, tier.tokens_per_day)},
                            day + timedelta(days=2), day_reset, {"tokens": "tokens_per_day"}))
        counters = self.store.counters
        steps = [counters.take(wid, costs, exp) for wid, costs, exp, _, _ in windows]
        subject = f"streams:{acct}"
        if tier.concurrent_streams:
            steps.append(counters.acquire_lease(subject, tier.concurrent_streams, self.lease_ttl))
        results = await asyncio.gather(*steps, return_exceptions=True)
        taken = results[:len(windows)]
        lease = results[len(windows)] if tier.concurrent_streams else None
        error = next((r for r in results if isinstance(r, BaseException)), None)
        refused = [i for i, r in enumerate(taken) if not isinstance(r, dict)]
        lease_refused = bool(tier.concurrent_streams) and not isinstance(lease, str)
        if error is None and not refused and not lease_refused:
            if lease:
                self._leases[lease] = subject
                self._ensure_renewer()
            headers = self._headers(windows[0], taken[0]) if per_minute else {}
            return Admission(limiter=self.name, max_tokens=max_tokens, headers=headers,
                             reservation={"windows": [(w[0], w[2], "requests" in w[1])
                                                      for w in windows],
                                          "cost": cost, "lease": (subject, lease) if lease
                                          else None})
        await self._undo(windows, taken, subject, lease)
        if error is not None:
            raise error
        if refused:
            wid, costs, _, reset, names = windows[refused[0]]
            values = await counters.values(wid)
            field = next((f for f, (c, lim) in costs.items() if values.get(f, 0) + c > lim),
                         next(iter(costs)))
            c, lim = costs[field]
            name = names[field]
            headers = self._headers(windows[0], values) if per_minute else {}
            what = "requests" if field == "requests" else "tokens"
            msg = (f"Rate limit reached for {name.replace('_', ' ')}: limit {lim}; this "
                   f"request needs {c} {what}. Try again in {_fmt(reset)}.")
            if c > lim:
                msg = (f"This request needs about {c} tokens, more than your tier's "
                       f"{name.replace('_', ' ')} limit of {lim}. Lower max_tokens.")
            return _deny(name, msg, retry_after=reset, headers=headers)
        headers = self._headers(windows[0], taken[0]) if per_minute else {}
        return _deny("concurrent_streams", f"Too many concurrent streams: your tier allows "
                     f"{tier.concurrent_streams}. Try again when one has finished.",
                     retry_after=1.0, headers=headers)

    @staticmethod
    def _headers(window, values) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers from the minute window's counters."""
        _, costs, _, reset, _ = window
        values = values if isinstance(values, dict) else {}
        headers: dict[str, str] = {}
        for field, (_, limit) in costs.items():
            headers[f"x-ratelimit-limit-{field}"] = str(limit)
            headers[f"x-ratelimit-remaining-{field}"] = str(max(0, limit - values.get(field, 0)))
            headers[f"x-ratelimit-reset-{field}"] = _fmt(reset)
        return headers

    async def _undo(self, windows, taken, subject, lease) -> None:
        steps = [self.store.counters.give_back(wid, {f: c for f, (c, _) in costs.items()})
                 for (wid, costs, *_), r in zip(windows, taken) if isinstance(r, dict)]
        if isinstance(lease, str):
            steps.append(self.store.counters.release_lease(subject, lease))
        await asyncio.gather(*steps, return_exceptions=True)

    async def settle(self, admission: Admission, usage: Usage, outcome: str) -> None:
        res = admission.reservation
        steps = []
        if res.get("lease"):
            subject, lease = res["lease"]
            self._leases.pop(lease, None)
            steps.append(self.store.counters.release_lease(subject, lease))
        # Reconcile the token reservation with the real usage; a request another
        # limiter refused never ran, so its request count goes back too.
        unused = res.get("cost", 0) - usage.total_tokens
        for wid, expires, counts_requests in res.get("windows", []):
            refund = {"tokens": unused} if unused > 0 else {}
            if outcome == "denied" and counts_requests:
                refund["requests"] = 1
            if refund:
                steps.append(self.store.counters.give_back(wid, refund))
            if unused < 0:
                steps.append(self.store.counters.add(wid, {"tokens": -unused}, expires))
        if steps:
            await asyncio.gather(*steps)

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        """Renew this process's live leases every third of their TTL."""
        while self._leases:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                await self.store.counters.renew_leases(list(self._leases), self.lease_ttl)
            except Exception:  # noqa: BLE001 - try again next round
                log.warning("lease renewal failed; retrying")


@hookimpl
def register_limiters(register, config, store):
    """Register the tier limiter (permissive when the tier sets no limits)."""
    if config.limits.enabled:
        register(TierLimiter(config, store))
