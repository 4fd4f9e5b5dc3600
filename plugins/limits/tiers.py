"""Built-in limiter plugin: subscription tiers from the config file.

Per tier: requests/minute, tokens/minute, tokens/day, concurrent streams, max
``max_tokens``, max prompt size, allowed models. Zero means unlimited; a tier with
all zeros is the permissive default.

Windows are fixed (UTC minute, UTC day). Admission reserves 1 request and a token
estimate (prompt estimate + max_tokens) with conditional counters in MongoDB (see
``gateway.store.counters``), plus a concurrent-stream lease; these run concurrently,
so admission costs about one database round trip of latency. Settlement refunds the
unused token reservation and releases the lease.
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
        self._leases: set[str] = set()
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
        counters = self.store.counters
        plan = []  # (limit name, counter id, cost, limit, expires, reset seconds)
        if tier.requests_per_minute:
            plan.append(("requests_per_minute", f"rpm:{acct}:{minute:%Y%m%d%H%M}", 1,
                         tier.requests_per_minute, minute + timedelta(minutes=2), minute_reset))
        if tier.tokens_per_minute:
            plan.append(("tokens_per_minute", f"tpm:{acct}:{minute:%Y%m%d%H%M}", cost,
                         tier.tokens_per_minute, minute + timedelta(minutes=2), minute_reset))
        if tier.tokens_per_day:
            plan.append(("tokens_per_day", f"tpd:{acct}:{day:%Y%m%d}", cost,
                         tier.tokens_per_day, day + timedelta(days=2), day_reset))
        steps = [counters.take(cid, c, lim, exp) for _, cid, c, lim, exp, _ in plan]
        if tier.concurrent_streams:
            steps.append(counters.acquire_lease(f"streams:{acct}", tier.concurrent_streams,
                                                self.lease_ttl))
        results = await asyncio.gather(*steps, return_exceptions=True)
        lease = results[len(plan)] if tier.concurrent_streams else None
        failed = next((i for i, r in enumerate(results[:len(plan)])
                       if r is None or isinstance(r, BaseException)), None)
        error = next((r for r in results if isinstance(r, BaseException)), None)
        lease_failed = bool(tier.concurrent_streams) and (lease is None or
                                                          isinstance(lease, BaseException))
        headers = self._headers(plan, results, now)
        if failed is not None or lease_failed:
            await self._undo(plan, results, lease)
            if error is not None:
                raise error
            if failed is not None:
                name, _, c, lim, _, reset = plan[failed]
                what = "requests" if name == "requests_per_minute" else "tokens"
                msg = (f"Rate limit reached for {name.replace('_', ' ')}: limit {lim}; "
                       f"this request needs {c} {what}. Try again in {_fmt(reset)}.")
                if c > lim:
                    msg = (f"This request needs about {c} tokens, more than your tier's "
                           f"{name.replace('_', ' ')} limit of {lim}. Lower max_tokens.")
                return _deny(name, msg, retry_after=reset, headers=headers)
            return _deny("concurrent_streams", f"Too many concurrent streams: your tier allows "
                         f"{tier.concurrent_streams}. Try again when one has finished.",
                         retry_after=1.0, headers=headers)
        if lease:
            self._leases.add(lease)
            self._ensure_renewer()
        return Admission(limiter=self.name, max_tokens=max_tokens, headers=headers,
                         reservation={"plan": [(cid, c, exp) for n, cid, c, _, exp, _ in plan
                                               if n != "requests_per_minute"],
                                      "requests": [cid for n, cid, *_ in plan
                                                   if n == "requests_per_minute"],
                                      "lease": lease, "cost": cost})

    @staticmethod
    def _headers(plan, results, now) -> dict[str, str]:
        headers: dict[str, str] = {}
        for (name, _, cost, lim, _, reset), value in zip(plan, results):
            if name == "tokens_per_day":
                continue
            kind = "requests" if name == "requests_per_minute" else "tokens"
            used = value if isinstance(value, int) else None
            headers[f"x-ratelimit-limit-{kind}"] = str(lim)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, lim - used) if used is not None
                                                           else 0)
            headers[f"x-ratelimit-reset-{kind}"] = _fmt(reset)
        return headers

    async def _undo(self, plan, results, lease) -> None:
        refunds = [self.store.counters.give_back(cid, c)
                   for (_, cid, c, _, _, _), r in zip(plan, results) if isinstance(r, int)]
        if isinstance(lease, str):
            refunds.append(self.store.counters.release_lease(lease))
        await asyncio.gather(*refunds, return_exceptions=True)

    async def settle(self, admission: Admission, usage: Usage, outcome: str) -> None:
        res = admission.reservation
        lease = res.get("lease")
        steps = []
        if lease:
            self._leases.discard(lease)
            steps.append(self.store.counters.release_lease(lease))
        if outcome == "denied":  # another limiter said no: this request never ran
            steps += [self.store.counters.give_back(cid, 1) for cid in res.get("requests", [])]
        for cid, reserved, expires in res.get("plan", []):
            actual = usage.total_tokens
            if actual < reserved:
                steps.append(self.store.counters.give_back(cid, reserved - actual))
            elif actual > reserved:
                steps.append(self.store.counters.add(cid, actual - reserved, expires))
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
