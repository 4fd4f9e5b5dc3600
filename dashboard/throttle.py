"""Sign-in throttling per account (the submitted email) and per client IP.

Failed attempts are counted in fixed windows with the exact limit counters of the
store, so the limits hold across gateway processes. The email is counted whether or not
an account exists (only its SHA-256 is stored), so throttling reveals nothing.
"""
from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta


class LoginThrottle:
    """Counts failed sign-ins; ``blocked`` once either limit is reached in the window."""

    def __init__(self, counters, max_account: int, max_ip: int, window: float) -> None:
        self.counters = counters
        self.max_account = max_account
        self.max_ip = max_ip
        self.window = window

    def _ids(self, email: str, ip: str) -> tuple[list[tuple[str, int]], datetime, float]:
        now = time.time()
        bucket = int(now // self.window)
        ends = (bucket + 1) * self.window
        who = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        ids = [(f"login|acct|{who}|{bucket}", self.max_account),
               (f"login|ip|{ip}|{bucket}", self.max_ip)]
        expires = datetime.fromtimestamp(ends, UTC) + timedelta(seconds=self.window)
        return ids, expires, ends - now

    async def blocked(self, email: str, ip: str) -> float:
        """Seconds until sign-in is allowed again (0 when it is allowed now)."""
        ids, _, remaining = self._ids(email, ip)
        for counter_id, limit in ids:
            if (await self.counters.values(counter_id)).get("n", 0) >= limit:
                return remaining
        return 0.0

    async def failed(self, email: str, ip: str) -> None:
        ids, expires, _ = self._ids(email, ip)
        for counter_id, _limit in ids:
            await self.counters.add(counter_id, {"n": 1}, expires)


async def take_slot(counters, what: str, who: str, limit: int, window: float) -> bool:
    """Count one ``what`` (e.g. a registration) by ``who`` (an IP, or an email's hash);
    False when over ``limit`` per window. Stops one client from making the gateway send
    many emails."""
    bucket = int(time.time() // window)
    expires = datetime.fromtimestamp((bucket + 2) * window, UTC)
    return await counters.take(f"{what}|{who}|{bucket}", {"n": (1, limit)},
                               expires) is not None


def email_key(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
