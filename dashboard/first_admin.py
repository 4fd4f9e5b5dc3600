"""The first admin: at start, if no admin exists, create one from ``[dashboard]
admin_email/admin_password``, or with a one-time random password written to
``data_dir/first-admin-password`` (mode 0600, as Jenkins does). Only the file's path is
logged: anything that ships logs would ship the password. The file is deleted once
that password is changed (or, at the next start, found no longer valid)."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets

log = logging.getLogger("allyoucantoken.dashboard")
BANNER_REPEAT = 3.0    # seconds after start-up the file's path is shown again
PASSWORD_FILE = "first-admin-password"


def password_file(config) -> str:
    return os.path.join(config.server.data_dir, PASSWORD_FILE)


def write_password_file(path: str, password: str) -> None:
    """``password`` into ``path``, readable by this user only (never wider, not even
    for an instant: the file is created 0600, or an old one truncated and re-moded)."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (password + "\n").encode())
    finally:
        os.close(fd)


async def forget_if_changed(config, passwords, old_hash: str | None) -> None:
    """After a password change: delete the one-time password file if it held the
    password that was just replaced (``old_hash``). Best effort, never raises."""
    path = password_file(config)
    try:
        with open(path, encoding="utf-8") as f:
            written = f.read(200).strip()
    except OSError:
        return
    try:
        ok, _ = await passwords.verify(old_hash, written) if old_hash else (False, None)
        if ok:
            os.remove(path)
            log.warning("the first admin's password was changed: %s deleted", path)
    except Exception as exc:  # noqa: BLE001 - a password change must not fail on this
        log.warning("could not delete %s: %s", path, exc.__class__.__name__)


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
            await self._forget_stale_file(gateway)
            return
        email = self.cfg.admin_email or "admin@localhost"
        tier = gateway.config.limits.default_tier
        if self.cfg.admin_password:
            account, _ = await create_admin(store, self.passwords, email,
                                            self.cfg.admin_password, tier)
            log.warning("created the first admin account %s", account["email"])
            return
        # A random password is written only by the process whose insert wins, so the
        # password in the file is always the valid one.
        password = secrets.token_urlsafe(15)
        account = await store.accounts.create_admin_if_absent(
            email, tier=tier, password_hash=await self.passwords.hash(password))
        if account is None:
            log.warning("%s already exists (maybe created by another process just now); "
                        "if it is no admin, run `allyoucantoken admin create --email ...`",
                        email)
            return
        path = password_file(gateway.config)
        try:
            write_password_file(path, password)
        except OSError as exc:
            log.error("created the first admin account %s, but could not write its "
                      "one-time password to %s (%s): set it with `allyoucantoken admin "
                      "create --email %s --password-stdin`", email, path, exc.strerror,
                      email)
            return
        message = (f"created the first admin account {email}; its one-time password is in "
                   f"{os.path.abspath(path)} (readable only by this user; deleted once "
                   f"the password is changed). Sign in at /dashboard/login and change it.")
        log.warning("%s", message)
        # Once more after start-up (model loading and the "listening" line), so that in
        # `make run` it does not scroll past. The path only: never the password.
        asyncio.get_running_loop().call_later(
            BANNER_REPEAT, lambda: log.warning("(repeated) %s", message))

    async def _forget_stale_file(self, gateway) -> None:
        """A password file left from an earlier start: deleted when its password no
        longer opens the first admin's account (changed since, e.g. by another process)."""
        path = password_file(gateway.config)
        if not os.path.exists(path):
            return
        account = await gateway.store.accounts.by_email(self.cfg.admin_email or
                                                        "admin@localhost")
        try:
            with open(path, encoding="utf-8") as f:
                written = f.read(200).strip()
            stale = account is None or not account.get("password_hash") or \
                not (await self.passwords.verify(account["password_hash"], written))[0]
            if stale:
                os.remove(path)
                log.warning("deleted %s: its password no longer works", path)
        except OSError as exc:
            log.warning("could not check %s: %s", path, exc.strerror)

    async def stop(self) -> None:
        pass
