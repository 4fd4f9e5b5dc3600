"""Retention: personal data of closed, rejected and suspended accounts goes after
``[retention] days`` (default 90) in that status.

``run_retention(store, days, now)`` does one pass (tests drive the clock through
``now``); ``RetentionService`` runs it in the background every ``interval`` seconds.
Erasure deletes the account, its keys, sessions and mail, and re-labels its usage
metadata with an anonymous id so billing totals survive without a link to the person.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.background import stop_task
from gateway.config import ConfigError, build_section

log = logging.getLogger("allyoucantoken.retention")

RETAINED_STATUSES = ("closed", "rejected", "suspended")


@dataclass
class RetentionConfig:
    """``[retention]``: how long data of closed/suspended/rejected accounts is kept."""

    days: float = 90.0
    interval: float = 3600.0     # seconds between passes
    enabled: bool = True

    @classmethod
    def from_config(cls, config) -> "RetentionConfig":
        cfg = build_section(cls, dict(config.extra.get("retention", {})), "retention")
        if cfg.days < 0 or cfg.interval <= 0:
            raise ConfigError("retention: days must be >= 0 and interval > 0")
        return cfg


async def run_retention(store, days: float, now: datetime | None = None) -> list[str]:
    """Erase every account whose retention period has passed; returns their old ids."""
    now = now or datetime.now(UTC)
    due = await store.accounts.due_for_retention(RETAINED_STATUSES,
                                                 now - timedelta(days=days))
    erased = []
    for account in due:
        if "admin" in account.get("roles", ()):
            continue
        await store.privacy.erase(account["_id"])
        erased.append(account["_id"])
        log.info("retention: erased account %s (%s since %s)", account["_id"],
                 account["status"], account["status_changed_at"].date())
    return erased


class RetentionService:
    """Runs ``run_retention`` periodically for the life of the gateway."""

    name = "retention"

    def __init__(self, cfg: RetentionConfig) -> None:
        self.cfg = cfg
        self._task: asyncio.Task | None = None

    async def start(self, gateway) -> None:
        if self.cfg.enabled:
            self._task = asyncio.ensure_future(self._run(gateway.store))

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _run(self, store) -> None:
        while True:
            try:
                await run_retention(store, self.cfg.days)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - try again next interval
                log.warning("retention pass failed: %s", type(exc).__name__)
            await asyncio.sleep(self.cfg.interval)
