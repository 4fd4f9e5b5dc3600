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

A database that answers but cannot write (its disk is full, it is read-only) is the
same as an outage here: nothing is dropped while the process lives, the batch is retried
every ``flush_interval`` and written once space returns. Meanwhile :meth:`status`
(``/readyz``) and the ``ayct_usage_persisting`` / ``ayct_usage_unwritten_requests``
metrics say that usage is only in memory. So that a disk that filled up still takes the
spool at exit, ``SPOOL_RESERVE`` bytes are set aside next to the spool file at start
(``usage-spool.jsonl.reserve``) and given back just before the spool is written. If at
exit neither the database nor the spool file can take the usage (a read-only
``data_dir``, or more rollups than the reserve holds), one critical log line gives what
is lost (requests and tokens); no traceback, no partial spool file left behind.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Callable

from gateway.obs import metrics
from gateway.background import WarnOnce, stop_task
from gateway.store.usage import add_counts, counts_of

log = logging.getLogger("allyoucantoken.usage")
warn = WarnOnce(log)

PRUNE_EVERY = 3600.0
TOUCH_EVERY = 30.0     # a key's last-use time is written at most this often
SPOOL_RESERVE = 256 * 1024   # bytes set aside for the spool (about 800 rollups)


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
        """``spool_path``: where usage the database cannot take at exit goes (``None``:
        nowhere; it is then reported lost at exit)."""
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
        # Persistence health: since when (monotonic) writes fail, why, how many attempts.
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.failed_writes = 0
        metrics.USAGE_PERSISTING.set_function(lambda: float(self.failing_since is None))
        metrics.USAGE_UNWRITTEN.set_function(lambda: self.held()["requests"])

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
            except Exception:
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
        self._reserve()
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
                held = self.held()
                warn.warning("usage write failed (%s); %d request(s) held in memory, "
                             "retried every %gs", describe_error(exc), held["requests"],
                             self.flush_interval)

    async def flush(self) -> None:
        """Write every unwritten batch, oldest first; a failed batch stays first in line
        (with its id) and new usage keeps folding into the pending rollups meanwhile."""
        async with self._lock:
            if not self.unwritten:
                self._seal()
            try:
                while self.unwritten:
                    batch = self.unwritten[0]
                    await self.store.usage.apply(batch.id, batch.rollups)
                    if batch.last_used:
                        await self.store.keys.touch(batch.last_used)
                    self.unwritten.pop(0)
                    if batch.spooled:
                        self._spool_written()
            except Exception as exc:
                self._failed(exc)
                raise
            self._written()

    # -- persistence health ---------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.failed_writes += 1
        self.last_error = describe_error(exc)
        metrics.USAGE_WRITE_FAILURES.inc()

    def _written(self) -> None:
        if self.failing_since is not None:
            log.warning("usage is written again after %.0fs (%d failed attempts)",
                        time.monotonic() - self.failing_since, self.failed_writes)
        self.failing_since, self.last_error, self.failed_writes = None, None, 0

    def held(self) -> dict[str, int]:
        """Usage counted in memory and not in the database yet (requests, tokens)."""
        total = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for rollups in [b.rollups for b in self.unwritten] + [self.pending]:
            for inc in rollups.values():
                for name in total:
                    total[name] += int(inc.get(name, 0))
        return total

    def status(self) -> dict[str, Any]:
        """For ``/readyz``: is usage reaching the database, and what waits in memory."""
        held = self.held()
        out: dict[str, Any] = {"persisting": self.failing_since is None,
                               "unwritten_requests": held["requests"],
                               "unwritten_tokens": held["prompt_tokens"]
                               + held["completion_tokens"],
                               # memory: one rollup per active (account, key, model, hour)
                               "unwritten_rollups": len(self.pending) + sum(
                                   len(b.rollups) for b in self.unwritten)}
        if self.failing_since is not None:
            out["failing_for_s"] = round(time.monotonic() - self.failing_since, 1)
            out["failed_writes"] = self.failed_writes
            out["error"] = self.last_error
        return out

    async def stop(self) -> None:
        """Write what is left within ``shutdown_timeout`` seconds; spool the rest. Never
        raises: usage that can go nowhere is reported lost (one critical line)."""
        await stop_task(self._task)
        try:
            async with asyncio.timeout(self.shutdown_timeout):
                await self.flush()
                self._seal(final=True)
                await self.flush()
        except Exception as exc:  # noqa: BLE001 - slow, unreachable or full database
            log.warning("usage not written at exit (%s); spooling it",
                        "timeout" if isinstance(exc, TimeoutError) else self.last_error)
        self._seal(final=True)
        if not self.spool_path:
            if any(b.rollups for b in self.unwritten):
                self._lost("no spool file is configured")
            return
        self._release_reserve()
        try:
            self._write_spool()
        except Exception as exc:  # noqa: BLE001 - a full or read-only data_dir
            self._lost(f"the spool file {self.spool_path} could not be written "
                       f"({getattr(exc, 'strerror', None) or type(exc).__name__})")

    def _lost(self, why: str) -> None:
        """Neither the database nor the spool file took the usage: one critical line
        with what is lost (batches still in an older spool file are kept there)."""
        lost = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        accounts = set()
        kept = bool(self.spool_path) and os.path.exists(self.spool_path)
        for batch in self.unwritten:
            if batch.spooled and kept:
                continue
            for (account, _k, _m, _h), inc in batch.rollups.items():
                accounts.add(account)
                for name in lost:
                    lost[name] += int(inc.get(name, 0))
        metrics.USAGE_LOST.inc(lost["requests"])
        log.critical("usage LOST at exit: %d request(s), %d token(s) (%d prompt, %d "
                     "completion) of %d account(s): the database did not take them (%s) "
                     "and %s", lost["requests"],
                     lost["prompt_tokens"] + lost["completion_tokens"],
                     lost["prompt_tokens"], lost["completion_tokens"], len(accounts),
                     self.last_error or "not reachable in time", why)

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

    def _reserve(self) -> None:
        """Set ``SPOOL_RESERVE`` bytes aside in the spool's folder (allocated, not sparse),
        given back at exit just before the spool is written: a disk that filled up in the
        meantime still takes the spool."""
        if not self.spool_path:
            return
        path = self.spool_path + ".reserve"
        try:
            if os.path.getsize(path) >= SPOOL_RESERVE:
                return
        except OSError:
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, SPOOL_RESERVE)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                    os.pwrite(fd, b"\0" * SPOOL_RESERVE, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("no room set aside for the usage spool in %s (%s)",
                        os.path.dirname(os.path.abspath(path)), exc.strerror)
            self._release_reserve()

    def _release_reserve(self) -> None:
        try:
            os.remove(self.spool_path + ".reserve")
        except OSError:
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
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for batch in batches:
                    fh.write(batch.to_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.spool_path)
        except OSError:
            try:                           # no partial spool left for the next start
                os.remove(tmp)
            except OSError:
                pass
            raise
        dir_fd = os.open(os.path.dirname(os.path.abspath(self.spool_path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        metrics.USAGE_SPOOLED.inc(len(batches))
        log.warning("%d usage batch(es) spooled to %s; they are written at the next start",
                    len(batches), self.spool_path)


def describe_error(exc: BaseException) -> str:
    """A short, content-free reason for a failed write: the error's class and, for an
    OS or database error, its message (``database or disk is full``)."""
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name}: {exc.strerror}"
    details = getattr(exc, "details", None)
    if isinstance(details, dict):
        errors = details.get("writeErrors") or [details]
        msg = errors[0].get("errmsg") if isinstance(errors[0], dict) else None
        if msg:
            return f"{name}: {str(msg)[:120]}"
    return name
