"""Sign-in throttling per account (the submitted email) and per client IP.

Attempts are counted in fixed windows with the exact limit counters of the store, so
the limits hold across gateway processes. An attempt is *reserved* before the password
is checked, with the same conditional take the tier limits use for quota: the counter
goes up only while it is below the limit, atomically, so however many requests arrive
at once, at most ``max_account`` passwords are checked per account (and ``max_ip`` per
IP) in a window. A failed check keeps its reservation; a correct password gives it
back. The email is counted whether or not an account exists (only its SHA-256 is
stored), so throttling reveals nothing.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass
class Attempt:
    """One reserved sign-in attempt: the counter windows it holds, or how long to wait."""

    windows: list[str]
    wait: float = 0.0           # > 0: refused, seconds until the window ends

    @property
    def allowed(self) -> bool:
        return self.wait == 0.0


class LoginThrottle:
    """Reserves sign-in attempts; refuses once either limit is reached in the window."""

    def __init__(self, counters, max_account: int, max_ip: int, window: float) -> None:
        self.counters = counters
        self.max_account = max_account
        self.max_ip = max_ip
        self.window = window

    def _ids(self, email: str, ip: str) -> tuple[list[tuple[str, int]], datetime, float]:
        now = time.time()
        bucket = int(now // self.window)
        ends = (bucket + 1) * self.window
        ids = [(f"login|acct|{email_key(email)}|{bucket}", self.max_account),
               (f"login|ip|{ip}|{bucket}", self.max_ip)]
        expires = datetime.fromtimestamp(ends, UTC) + timedelta(seconds=self.window)
        return ids, expires, max(ends - now, 0.001)

    async def reserve(self, email: str, ip: str) -> Attempt:
        """Count one attempt against both limits before any password is checked (all or
        nothing). ``Attempt.allowed`` is False when a limit is already reached."""
        ids, expires, remaining = self._ids(email, ip)
        taken: list[str] = []
        for counter_id, limit in ids:
            if await self.counters.take(counter_id, {"n": (1, limit)}, expires) is None:
                await self.release(Attempt(taken))
                return Attempt([], wait=remaining)
            taken.append(counter_id)
        return Attempt(taken)

    async def release(self, attempt: Attempt) -> None:
        """Give a reservation back (the password was right, or it was never checked)."""
        for counter_id in attempt.windows:
            await self.counters.give_back(counter_id, {"n": 1})
        attempt.windows = []


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
