"""All MongoDB access lives in this package; nothing else imports pymongo.

``Store`` owns one ``AsyncMongoClient`` and exposes one repository object per
concern (accounts, API keys, usage, limit counters, ...). Each repository creates
its own indexes in ``init()``.

The repositories serve every layer, so the dashboard's stay here too: ``sessions``
(read by the session-auth plugin as well), ``resets``, ``outbox`` (also fed by the
fair-use monitor), ``audit`` and ``privacy`` (whose export and erasure span the core's
collections: keys, usage rollups, limit counters and slots). Keeping them here keeps
storage access in one place: the document layouts, the indexes created at start (with
or without the dashboard) and the only imports of ``pymongo`` (tests/test_layers.py).
"""
from __future__ import annotations

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError as StoreError  # noqa: F401 - re-exported for handlers
from pymongo.errors import DuplicateKeyError  # noqa: F401 - re-exported (a unique index refused)
from pymongo.errors import OperationFailure

from gateway.store.accounts import Accounts
from gateway.store.audit import AuditLog
from gateway.store.capacity import CapacityShares
from gateway.store.counters import Counters
from gateway.store.keys import ApiKeys
from gateway.store.monitoring import CommandCounter
from gateway.store.outbox import Outbox
from gateway.store.privacy import Privacy
from gateway.store.resets import PasswordResets
from gateway.store.sessions import Sessions
from gateway.store.usage import UsageStore


class Store:
    """The gateway's handle on MongoDB: one client, one database, many repositories."""

    def __init__(self, uri: str, db_name: str, timeout: float = 5.0) -> None:
        self.client = AsyncMongoClient(uri, tz_aware=True, connect=False,
                                       serverSelectionTimeoutMS=int(timeout * 1000),
                                       event_listeners=[CommandCounter()])
        self.db = self.client[db_name]
        self.accounts = Accounts(self.db)
        self.keys = ApiKeys(self.db)
        self.usage = UsageStore(self.db)
        self.counters = Counters(self.db, timeout)
        self.sessions = Sessions(self.db)
        self.outbox = Outbox(self.db)
        self.audit = AuditLog(self.db)
        self.privacy = Privacy(self.db)
        self.resets = PasswordResets(self.db)
        self.capacity = CapacityShares(self.db)
        self.repositories: list = [self.accounts, self.keys, self.usage, self.counters,
                                   self.sessions, self.outbox, self.audit, self.privacy,
                                   self.resets, self.capacity]

    async def init(self) -> None:
        """Check the connection and create every repository's indexes. A database that
        wants credentials the URI lacks, or refuses them, stops the start in one line."""
        try:
            await self.db.command("ping")
        except OperationFailure as exc:   # MongoDB: 13 Unauthorized, 18 AuthenticationFailed
            if exc.code not in (13, 18) and "authentication" not in str(exc).lower():
                raise
            where = ", ".join(f"{h}:{p}" for h, p in
                              self.client.topology_description.server_descriptions())
            why = (exc.details or {}).get("errmsg") or exc
            raise SystemExit(
                f"cannot start: the database at {where} refused the gateway ({why}). The "
                "embedded server (allyoucantoken db serve) keeps its user and password in "
                "embedded-db.auth next to its SQLite file (data_dir/embedded-db.auth): put "
                "them in [database] uri as `db serve` prints it (docs/deploying.md)") from None
        for repo in self.repositories:
            await repo.init()

    async def ping(self) -> bool:
        try:
            await self.db.command("ping")
            return True
        except Exception:  # noqa: BLE001 - health check reports, never raises
            return False

    async def collection_names(self) -> list[str]:
        return await self.db.list_collection_names()

    async def dump_collection(self, name: str) -> list[dict]:
        """Every document of one collection (tests and data export use it)."""
        return [doc async for doc in self.db[name].find({})]

    async def close(self) -> None:
        await self.client.close()
