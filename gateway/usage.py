"""Usage accounting off the request path: events are folded into rollups in memory and
written in batches; what cannot be written by exit goes to a spool file.

An event is a dict of metadata (who, which model, token counts, timing, status; never
prompt or completion text). ``record`` adds it to the in-memory rollup of its (account,
key, model, hour) and hands it to the ``on_usage`` observers; it never waits. Every
``flush_interval`` the pending rollups are sealed into a *batch* with a unique id and
written with one ``$inc`` per rollup (``UsageStore.apply``), exactly once even when
retried. Memory is bounded by the number of active rollups, not by traffic: during a
database outage new usage keeps folding into the pending rollups while the sealed batch
waits to be retried.

At exit, whatever is still unwritten after ``shutdown_timeout`` seconds is appended to
``<data_dir>/usage-spool.jsonl`` (fsync'd) and written at the next start, with the same
batch ids, so it is counted exactly once.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Callable

from gateway import metrics
from gateway.background import WarnOnce, stop_task
from gateway.store.usage import add_counts, counts_of

log = logging.getLogger("allyoucantoken.usage")
warn = WarnOnce(log)

PRUNE_EVERY = 3600.0
TOUCH_EVERY = 30.0     # a key's last-use time is written at most this often


@dataclass
class Batch:
    """Rollup increments sealed under one id (and the keys' last-use times)."""

    id: str
    rollups: dict[tuple, dict[str, float]]
    last_used: dict[str, datetime] = field(default_factory=dict)
    spooled: bool = False          # read from the spool file at start

    def to_json(self) -> str:
        return json.dumps({"id": self.id,
                           "rollups": [[a, k, m, h.isoformat(), inc]
                                       for (a, k, m, h), inc in self.rollups.items()],
                           "last_used": {k: t.isoformat() for k, t in self.last_used.items()}})

    @classmethod
    def from_json(cls, line: str) -> "Batch":
        data = json.loads(line)
        return cls(data["id"], {(a, k, m, datetime.fromisoformat(h)): inc
                                for a, k, m, h, inc in data["rollups"]},
                   {k: datetime.fromisoformat(t) for k, t in data["last_used"].items()},
                   spooled=True)


def _implemented(hook) -> bool:
    """False for a pluggy hook no plugin implements: calling it would copy the event
    and run pluggy's dispatch for nothing (on every request)."""
    impls = getattr(hook, "get_hookimpls", None)
    return impls is None or bool(impls())


class UsageRecorder:
    """Folds usage events into rollups and writes them in the background."""

    def __init__(self, store, flush_interval: float = 1.0, spool_path: str | None = None,
                 hourly_days: float = 14.0, shutdown_timeout: float = 5.0,
                 observers: Callable[..., Any] | None = None) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.spool_path = spool_path
        self.hourly_days = hourly_days
        self.shutdown_timeout = shutdown_timeout
        self.observers = observers
        self.pending: dict[tuple, dict[str, float]] = {}
        self.pending_last_used: dict[str, datetime] = {}
        self.unwritten: list[Batch] = []       # sealed, in order (spooled ones first)
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._pruned = -PRUNE_EVERY
        self._key_written: dict[str, float] = {}   # key id -> when its last use was written

    def record(self, event: dict[str, Any]) -> None:
        """Count one request (non-blocking; metadata only)."""
        ts = event.setdefault("ts", datetime.now(UTC))
        hour = ts.replace(minute=0, second=0, microsecond=0)
        key = (event.get("account_id"), event.get("key_id"), event.get("model"), hour)
        add_counts(self.pending.setdefault(key, {}), counts_of(event))
        key_id = event.get("key_id")
        if key_id and ts > self.pending_last_used.get(key_id, ts.min.replace(tzinfo=UTC)):
            self.pending_last_used[key_id] = ts
        metrics.USAGE_RECORDED.inc()
        if self.observers and _implemented(self.observers):
            try:
                self.observers(event=dict(event))
            except Exception:  # noqa: BLE001 - an observer plugin must not break requests
                log.exception("on_usage hook failed")

    async def start(self) -> None:
        """Fold a legacy events collection, queue the spool, start the writer."""
        try:
            folded = await self.store.usage.fold_legacy_events()
            if folded:
                log.info("folded %d legacy usage events into hourly rollups", folded)
        except Exception as exc:  # noqa: BLE001 - retried at the next start
            log.warning("could not fold legacy usage events (%s)", type(exc).__name__)
        self.unwritten = self._read_spool() + self.unwritten
        self._task = asyncio.ensure_future(self._run())

    def _seal(self, final: bool = False) -> None:
        """Turn the pending rollups into a batch. A key's last-use time joins it when the
        key is new or was last written TOUCH_EVERY seconds ago (so steady traffic adds
        no write per flush, and a key's first use shows at once)."""
        now = time.monotonic()
        due = {k: t for k, t in self.pending_last_used.items()
               if final or now - self._key_written.get(k, -TOUCH_EVERY) >= TOUCH_EVERY}
        if self.pending or due:
            self.unwritten.append(Batch("b_" + secrets.token_hex(10), self.pending, due))
            self.pending = {}
            for k in due:
                del self.pending_last_used[k]
                self._key_written[k] = now
            if len(self._key_written) > 10_000:       # forget keys not seen lately
                self._key_written = {k: t for k, t in self._key_written.items()
                                     if now - t < TOUCH_EVERY}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
                if time.monotonic() - self._pruned >= PRUNE_EVERY:
                    await self.store.usage.prune_hourly(self.hourly_days)
                    self._pruned = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - keep the batch, try again next round
                warn.warning("usage write failed (%s); will retry", type(exc).__name__)

    async def flush(self) -> None:
        """Write every unwritten batch, oldest first; a failed batch stays first in line
        (with its id) and new usage keeps folding into the pending rollups meanwhile."""
        async with self._lock:
            if not self.unwritten:
                self._seal()
            while self.unwritten:
                batch = self.unwritten[0]
                await self.store.usage.apply(batch.id, batch.rollups)
                if batch.last_used:
                    await self.store.keys.touch(batch.last_used)
                self.unwritten.pop(0)
                if batch.spooled:
                    self._spool_written()

    async def stop(self) -> None:
        """Write what is left within ``shutdown_timeout`` seconds; spool the rest."""
        await stop_task(self._task)
        try:
            async with asyncio.timeout(self.shutdown_timeout):
                await self.flush()
                self._seal(final=True)
                await self.flush()
        except Exception as exc:  # noqa: BLE001 - slow or unreachable database
            log.warning("usage not written at exit (%s); spooling it", type(exc).__name__)
        self._seal(final=True)
        self._write_spool()

    # -- spool file ---------------------------------------------------------------------
    def _read_spool(self) -> list[Batch]:
        if not self.spool_path or not os.path.exists(self.spool_path):
            return []
        batches = []
        with open(self.spool_path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        batches.append(Batch.from_json(line))
                    except (ValueError, KeyError, TypeError):
                        log.error("unreadable line in the usage spool skipped")
        if batches:
            log.info("replaying %d spooled usage batch(es)", len(batches))
        return batches

    def _spool_written(self) -> None:
        """The spool's batches are all in the database: remove the file."""
        if self.spool_path and not any(b.spooled for b in self.unwritten):
            try:
                os.remove(self.spool_path)
            except FileNotFoundError:
                pass

    def _write_spool(self) -> None:
        """Replace the spool by every unwritten batch (atomically, fsync'd)."""
        if not self.spool_path:
            return
        batches = [b for b in self.unwritten if b.rollups]
        if not batches:
            self._spool_written()
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.spool_path)), exist_ok=True)
        tmp = self.spool_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for batch in batches:
                fh.write(batch.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.spool_path)
        dir_fd = os.open(os.path.dirname(os.path.abspath(self.spool_path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        metrics.USAGE_SPOOLED.inc(len(batches))
        log.warning("%d usage batch(es) spooled to %s; they are written at the next start",
                    len(batches), self.spool_path)
