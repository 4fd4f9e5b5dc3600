"""The first admin: at start, if no admin exists, create one from ``[dashboard]
admin_email/admin_password`` or print a one-time random password to the console."""
from __future__ import annotations

import asyncio
import logging
import secrets
import sys

log = logging.getLogger("allyoucantoken.dashboard")
BANNER_REPEAT = 3.0    # seconds after start-up the one-time password is shown again


async def create_admin(store, passwords, email: str, password: str | None,
                       tier: str) -> tuple[dict, str | None]:
    """Create or promote an admin. Returns (account, generated password or None)."""
    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(15)
    account, _created = await store.accounts.create_or_promote_admin(
        email, tier=tier, password_hash=await passwords.hash(password))
    return account, generated


class FirstAdmin:
    """Service: makes sure an admin exists when the gateway starts."""

    name = "first-admin"

    def __init__(self, cfg, passwords) -> None:
        self.cfg = cfg
        self.passwords = passwords

    async def start(self, gateway) -> None:
        store = gateway.store
        if await store.accounts.has_admin():
            return
        email = self.cfg.admin_email or "admin@localhost"
        tier = gateway.config.limits.default_tier
        if self.cfg.admin_password:
            account, _ = await create_admin(store, self.passwords, email,
                                            self.cfg.admin_password, tier)
            log.warning("created the first admin account %s", account["email"])
            return
        # A random password is printed only by the process whose insert wins, so a
        # password shown on the console is always the valid one.
        password = secrets.token_urlsafe(15)
        account = await store.accounts.create_admin_if_absent(
            email, tier=tier, password_hash=await self.passwords.hash(password))
        if account is None:
            log.warning("%s already exists (maybe created by another process just now); "
                        "if it is no admin, run `allyoucantoken admin create --email ...`",
                        email)
            return
        log.warning("created the first admin account %s", email)
        banner = (f"\n*** First admin: {email}  one-time password: {password}\n"
                  "*** Sign in at /dashboard/login and change it now. ***\n")
        print(banner, file=sys.stderr, flush=True)
        # Once more after start-up (model loading and the "listening" line), so that in
        # `make run` it is the last thing on the console instead of scrolling past.
        asyncio.get_running_loop().call_later(
            BANNER_REPEAT, lambda: print(banner + "*** (repeated from above) ***\n",
                                         file=sys.stderr, flush=True))

    async def stop(self) -> None:
        pass
