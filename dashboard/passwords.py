"""Password hashing with argon2id (argon2-cffi), run off the event loop.

``Passwords`` wraps one ``argon2.PasswordHasher``. Hashing and verifying take tens of
milliseconds of CPU, so both run in a worker thread (``asyncio.to_thread``). When the
configured parameters change, ``verify`` returns a fresh hash so the caller can upgrade
the stored one at login. ``policy_error`` is the minimum password policy. Every check
is counted in ``ayct_password_checks_total`` (what the sign-in throttle bounds).
"""
from __future__ import annotations

import asyncio

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from prometheus_client import Counter

CHECKS = Counter("ayct_password_checks_total",
                 "Passwords checked with argon2id (sign-in, password change), by result "
                 "(right, wrong)", ["result"])
for _result in ("right", "wrong"):
    CHECKS.labels(_result)

COMMON = frozenset({"password", "password1", "passw0rd", "12345678", "123456789",
                    "1234567890", "qwertyuiop", "iloveyou", "letmein123", "allyoucantoken",
                    "changeme123", "administrator", "welcome123", "password123"})


def policy_error(password: str, email: str = "", min_length: int = 10) -> str | None:
    """Why a new password is not acceptable, or None. The message is shown to the user."""
    if len(password) < min_length:
        return f"Use at least {min_length} characters for your password."
    if len(password) > 1024:
        return "Use at most 1024 characters for your password."
    if password.lower() in COMMON or password.lower() == email.strip().lower() \
            or len(set(password)) < 4:
        return "This password is too easy to guess; choose a longer or less common one."
    return None


class Passwords:
    """argon2id hashing with configurable cost; all work happens off the event loop."""

    def __init__(self, time_cost: int = 3, memory_cost: int = 65536,
                 parallelism: int = 4) -> None:
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost,
                                     parallelism=parallelism, type=Type.ID)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> tuple[bool, str | None]:
        """Check a password: ``(ok, new_hash)``; ``new_hash`` is set when the stored hash
        uses other parameters than the configured ones (store it to upgrade)."""
        if not stored_hash:
            # Same work as a real check, so a missing account is not told apart by timing.
            if self._dummy is None:
                self._dummy = await self.hash("not-a-real-password")
            await asyncio.to_thread(self._check, self._dummy, password)
            CHECKS.labels("wrong").inc()
            return False, None
        ok = await asyncio.to_thread(self._check, stored_hash, password)
        CHECKS.labels("right" if ok else "wrong").inc()
        if not ok:
            return False, None
        if self.hasher.check_needs_rehash(stored_hash):
            return True, await self.hash(password)
        return True, None

    def _check(self, stored_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
