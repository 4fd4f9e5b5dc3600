"""Built-in auth plugin: ``Authorization: Bearer <key>`` API keys (on the Anthropic
Messages routes, ``/v1/messages*``, also ``x-api-key: <key>``).

Keys are looked up by SHA-256 in a small in-process cache (bounded size) and in MongoDB
on a miss. A key in use is looked up again in the background once its entry is half
``auth.key_cache_ttl`` old, so steady traffic never waits for the database, and while
the database answers no answer is based on data older than the TTL: that is the bound
within which a revoked key or a suspended account is refused on every process. While the database
cannot be reached, cached entries keep working for ``auth.key_cache_max_stale`` seconds
(requests do not wait for it meanwhile; a lookup in the background retries).

**No request waits for a slow database while its key is cached.** A cached entry older
than the TTL (its refresh in the background did not come back in time) is looked up
again, but the request waits for that lookup at most ``STALE_WAIT`` (50 ms): if the
database has not answered by then, the cached entry answers (the stale grace lasts while
the lookup is on its way, at most ``key_cache_max_stale``) and the lookup goes on in the
background; when it answers, the cache has the new entry, and when it fails, the database
is down (see above). So a revoked key or a suspended account is refused within the TTL
whenever the database answers within 50 ms, else as soon as it answers.

Per-key controls come with the cached principal, so they cost no database round trip:
an expired key is refused (401) and a caller outside the key's IP allowlist too (403;
the address is the client's, through the ``server.trusted_proxies`` rules). Allowed
models and per-key limits are enforced by the tier limiter.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections import OrderedDict
from datetime import UTC

from gateway.sdk import (KEY_LIMITS, KEY_PREFIX, APIError, Authenticator, Options, Principal,
                         StoreError, WarnOnce, client_ip, hash_key, hookimpl, section_options)

_INACTIVE = {"pending": "Your account is awaiting approval.",
             "suspended": "Your account is suspended.",
             "rejected": "Your account application was not approved.",
             "closed": "Your account is closed."}


log = WarnOnce(logging.getLogger("allyoucantoken.auth"))
DOWN_RETRY = 5.0    # after a failed lookup, answer from the cache (or 503) without waiting
STALE_WAIT = 0.05   # a request with a cached key waits at most this long for a lookup


class AuthConfig(Options):
    """``[auth]``: the API-key cache (its TTL bounds how fast revocation takes effect).
    This plugin owns the section (``config_sections``)."""

    key_cache_ttl: float = 2.0       # revocation/suspension bound, seconds
    key_cache_size: int = 10_000
    key_cache_max_stale: float = 600.0  # while the database is down, cached keys work this long

    @classmethod
    def from_config(cls, config) -> "AuthConfig":
        """``[auth]`` of ``config``, validated (a ``ConfigError`` names the key)."""
        return section_options(config, "auth", cls)


class KeyCache:
    """A bounded LRU of sha256 -> (principal or error, time it was looked up)."""

    def __init__(self, ttl: float, size: int, max_stale: float = 0.0) -> None:
        self.ttl = ttl
        self.size = size
        self.max_stale = max(ttl, max_stale)
        self._data: OrderedDict[str, tuple[object, float]] = OrderedDict()

    def get(self, sha: str) -> tuple[object, float] | None:
        """(value, age in seconds), or None when absent or too old to use at all."""
        item = self._data.get(sha)
        if item is None:
            return None
        age = time.monotonic() - item[1]
        if age > self.max_stale:
            self._data.pop(sha, None)
            return None
        self._data.move_to_end(sha)
        return item[0], age

    def put(self, sha: str, value) -> None:
        self._data[sha] = (value, time.monotonic())
        self._data.move_to_end(sha)
        while len(self._data) > self.size:
            self._data.popitem(last=False)


class ApiKeyAuthenticator(Authenticator):
    """Resolves a bearer key to the account behind it (active accounts only)."""

    name = "api_key"

    def __init__(self, store, ttl: float, size: int, max_stale: float = 0.0,
                 trusted_proxies: list[str] | None = None) -> None:
        self.store = store
        self.trusted_proxies = list(trusted_proxies or [])
        self.cache = KeyCache(ttl, size, max_stale)
        self._refreshing: dict[str, asyncio.Task] = {}
        self._lookups: dict[str, asyncio.Future] = {}   # sha -> the lookup in flight
        self._lookup_sent: dict[str, float] = {}        # sha -> when it was sent
        self._db_down_until = 0.0
        self._probing = False               # a lookup is in flight (while the database is down)

    async def authenticate(self, request) -> Principal | None:
        header = request.headers.get("Authorization", "")
        if not header:
            # The Anthropic Messages API sends the same keys as ``x-api-key``.
            key = request.headers.get("x-api-key", "") \
                if request.path.startswith("/v1/messages") else ""
            if not key:
                return None
            header = "Bearer " + key
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise APIError(401, "The Authorization header must be 'Bearer YOUR_KEY'.",
                           code="invalid_api_key")
        sha = hash_key(key)
        cached = self.cache.get(sha)
        if cached is not None and (cached[1] <= self.cache.ttl or
                                   time.monotonic() < self._db_down_until):
            result, age = cached
            if age > self.cache.ttl / 2:
                self._refresh_soon(key, sha)
        elif time.monotonic() < self._db_down_until and self._probing:
            # The database is down and one request is already finding out whether it is
            # back: answer at once instead of making every request wait for the timeout.
            raise APIError(503, "The service is temporarily unavailable; please retry shortly.",
                           code="service_unavailable", headers={"Retry-After": "5"})
        else:
            self._probing = True
            try:
                if cached is not None:
                    # Stale: wait for the lookup only briefly (see the module's docstring).
                    result = await self._lookup_or_cached(key, sha, cached[0])
                else:
                    result = await self._shared_lookup(key, sha)
            except StoreError:
                self._db_down_until = time.monotonic() + DOWN_RETRY
                if cached is None:
                    raise
                log.warning("database unreachable: serving a cached key")
                result = cached[0]
            else:
                self._db_down_until = 0.0
                self.cache.put(sha, result)
            finally:
                self._probing = False
        if isinstance(result, APIError):
            raise result
        self._check_controls(result, request)
        return result

    async def _lookup_or_cached(self, key: str, sha: str, cached):
        """The lookup's answer if it comes within ``STALE_WAIT``; else the cached entry,
        and the lookup goes on in the background (it updates the cache when it answers,
        or marks the database down when it fails)."""
        pending = self._start_lookup(key, sha)
        # Not at all while the last lookup failed (the database is down: this one finds
        # out whether it is back) or another one has been on its way for STALE_WAIT.
        now = time.monotonic()
        stalled = self._db_down_until or any(now - t >= STALE_WAIT
                                             for t in self._lookup_sent.values())
        done, _ = await asyncio.wait((pending,), timeout=0 if stalled else STALE_WAIT)
        if done:
            return pending.result()
        if sha not in self._refreshing:
            self._refreshing[sha] = asyncio.ensure_future(self._refresh(key, sha))
        return cached

    def _start_lookup(self, key: str, sha: str) -> asyncio.Future:
        pending = self._lookups.get(sha)
        if pending is None:
            pending = self._lookups[sha] = asyncio.ensure_future(self._lookup(key, sha))
            self._lookup_sent[sha] = time.monotonic()
            pending.add_done_callback(functools.partial(self._lookup_done, sha))
        return pending

    async def _shared_lookup(self, key: str, sha: str):
        """One database lookup per key at a time: requests for a key that is not (or no
        longer) cached while its lookup is in flight wait for that lookup, instead of
        each making its own round trip (a burst of 200 streams made 400)."""
        return await asyncio.shield(self._start_lookup(key, sha))

    def _lookup_done(self, sha: str, future: asyncio.Future) -> None:
        if self._lookups.get(sha) is future:
            del self._lookups[sha]
            self._lookup_sent.pop(sha, None)
        if not future.cancelled():
            future.exception()          # retrieved: each waiter handles it

    def _check_controls(self, principal: Principal, request) -> None:
        """Expiry and IP allowlist of the key, from the cached principal."""
        if principal.expires_at is not None and time.time() >= principal.expires_at:
            raise APIError(401, "This API key has expired. Create a new one or extend it in "
                                "the dashboard.", code="expired_api_key")
        if principal.allowed_cidrs:
            ip = client_ip(request, self.trusted_proxies)
            if not ip_allowed(ip, principal.allowed_cidrs):
                raise APIError(403, f"This API key cannot be used from {ip or 'this address'}"
                                    " (not in its IP allowlist).", code="ip_not_allowed")

    def _refresh_soon(self, key: str, sha: str) -> None:
        if sha not in self._refreshing:
            self._refreshing[sha] = asyncio.ensure_future(self._refresh(key, sha))

    async def _refresh(self, key: str, sha: str) -> None:
        """Look a cached key up again in the background; on a database error the old
        entry stays (up to ``key_cache_max_stale``)."""
        try:
            self.cache.put(sha, await asyncio.shield(self._start_lookup(key, sha)))
            self._db_down_until = 0.0
        except Exception as exc:  # noqa: BLE001 - keep serving the cached entry
            self._db_down_until = time.monotonic() + DOWN_RETRY
            log.warning("key refresh failed (%s); using the cached entry",
                        type(exc).__name__)
        finally:
            self._refreshing.pop(sha, None)

    async def _lookup(self, key: str, sha: str):
        doc = await self.store.keys.by_hash(sha) if key.startswith(KEY_PREFIX) else None
        if doc is None or doc.get("revoked_at"):
            shown = key[:len(KEY_PREFIX) + 4] + "*" * 4
            return APIError(401, f"Incorrect API key provided: {shown}. You can find your API "
                                 "keys in the dashboard.", code="invalid_api_key")
        account = await self.store.accounts.get(doc["account_id"])
        status = account.get("status") if account else "closed"
        if status != "active":
            return APIError(403, _INACTIVE.get(status, "Your account is not active."),
                            code="account_inactive")
        return principal_for(account, doc)


def principal_for(account: dict, key: dict) -> Principal:
    """The principal of an active account calling with one of its keys."""
    expires = key.get("expires_at")
    limits = key.get("limits") or {}
    return Principal(account_id=account["_id"], tier=account.get("tier", ""),
                     status=account.get("status", "active"), key_id=key["_id"],
                     roles=tuple(account.get("roles", ())), via="api_key",
                     key_limits=tuple((n, int(limits[n])) for n in KEY_LIMITS
                                      if limits.get(n)),
                     allowed_models=tuple(key.get("allowed_models") or ()),
                     allowed_cidrs=tuple(key.get("allowed_cidrs") or ()),
                     expires_at=_timestamp(expires) if expires else None,
                     scopes=tuple(key.get("scopes") or ()))


def _timestamp(value) -> float:
    if value.tzinfo is None:                 # a naive BSON date is UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@functools.lru_cache(maxsize=4096)
def _networks(cidrs: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def ip_allowed(ip: str, cidrs: tuple[str, ...]) -> bool:
    """True when ``ip`` is inside one of ``cidrs`` (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if getattr(addr, "ipv4_mapped", None):
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in _networks(cidrs))


@hookimpl
def config_sections():
    """The API-key cache is configured in ``[auth]``."""
    return ["auth"]


@hookimpl
def register_authenticators(register, config, store):
    """Register the bearer API key authenticator."""
    auth = AuthConfig.from_config(config)
    register(ApiKeyAuthenticator(store, auth.key_cache_ttl, auth.key_cache_size,
                                 auth.key_cache_max_stale,
                                 config.server.trusted_proxies))
