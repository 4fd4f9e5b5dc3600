"""Built-in fair-use plugin: a background check of today's usage per account.

An account whose error rate or daily token volume passes the operator's thresholds
(``[fair_use]``) gets an ``abuse_flag`` that admins see; with ``auto_suspend`` it is
also suspended and its owner is emailed through the outbox. The check reads the
daily rollups only (metadata), so it costs nothing on the request path.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from gateway import sdk
from gateway.sdk import hookimpl, stop_task

log = logging.getLogger("allyoucantoken.fair_use")


class FairUseConfig(sdk.Options):
    """``[fair_use]``: thresholds that raise an abuse flag (and optionally suspend).
    This plugin owns the section (``config_sections``)."""

    enabled: bool = False
    check_interval: float = 60.0        # seconds between checks of today's usage
    min_requests: int = 50              # judge the error rate only after this many requests
    max_error_rate: float = 0.0         # e.g. 0.5: flag when over half the requests fail; 0 off
    max_daily_tokens: int = 0           # flag above this many tokens in a UTC day; 0 off
    auto_suspend: bool = False          # also suspend the account (and email its owner)

    @classmethod
    def from_config(cls, config) -> "FairUseConfig":
        """``[fair_use]`` of ``config``, validated (a ``ConfigError`` names the key)."""
        return sdk.section_options(config, "fair_use", cls)


class FairUseMonitor(sdk.Service):
    """Flags (and optionally suspends) accounts far above normal use."""

    name = "fair_use"

    def __init__(self, config, store) -> None:
        self.cfg = FairUseConfig.from_config(config)
        self.store = store
        self.gateway = None
        self._task: asyncio.Task | None = None

    async def start(self, gateway) -> None:
        self.gateway = gateway
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.check_interval)
            try:
                await self.check()
            except Exception:
                log.exception("fair-use check failed")

    def verdict(self, totals: dict) -> str | None:
        """The reason to flag these day totals, or None."""
        if self.cfg.max_daily_tokens and totals["tokens"] > self.cfg.max_daily_tokens:
            return f"{totals['tokens']} tokens today (threshold {self.cfg.max_daily_tokens})"
        if self.cfg.max_error_rate and totals["requests"] >= self.cfg.min_requests:
            rate = totals["errors"] / totals["requests"]
            if rate > self.cfg.max_error_rate:
                return (f"error rate {rate:.0%} over {totals['requests']} requests today "
                        f"(threshold {self.cfg.max_error_rate:.0%})")
        return None

    async def check(self, now: datetime | None = None) -> list[str]:
        """Flag the accounts over a threshold today; returns their ids."""
        now = now or datetime.now(UTC)
        day = now.strftime("%Y-%m-%d")
        flagged = []
        for totals in await self.store.usage.totals_for_day(day):
            reason = self.verdict(totals)
            if reason is None:
                continue
            account = await self.store.accounts.get(totals["account_id"])
            if not account or (account.get("abuse_flag") or {}).get("day") == day:
                continue
            fields = {"abuse_flag": {"reason": reason, "day": day, "at": now}}
            suspend = self.cfg.auto_suspend and account.get("status") == "active"
            if suspend:
                fields["status"] = "suspended"
            await self.store.accounts.update(account["_id"], **fields)
            log.warning("fair use: flagged account %s: %s%s", account["_id"], reason,
                        "; suspended" if suspend else "")
            if suspend:
                await self._notify(account, reason)
            flagged.append(account["_id"])
        return flagged

    async def _notify(self, account: dict, reason: str) -> None:
        try:
            from plugins.mail.mailer import enqueue
        except ImportError:  # the email feature is not installed
            return
        if getattr(self.store, "outbox", None) is None:
            return
        await enqueue(self.gateway, account["email"], "Your AllYouCanToken account is suspended",
                      "Your account was suspended automatically under our fair-use policy:\n"
                      f"{reason}.\n\nReply to this message if you think this is a mistake.",
                      kind="status_suspended", account_id=account["_id"])


@hookimpl
def config_sections():
    """The thresholds are configured in ``[fair_use]``."""
    return ["fair_use"]


@hookimpl
def register_services(register, config, store):
    """Register the fair-use monitor when ``[fair_use] enabled = true`` (the section is
    validated either way, so a misspelt key stops the gateway at start)."""
    if FairUseConfig.from_config(config).enabled:
        register(FairUseMonitor(config, store))
