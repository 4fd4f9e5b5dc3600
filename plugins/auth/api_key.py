"""Built-in auth plugin: ``Authorization: Bearer <key>`` API keys.

Keys are looked up by SHA-256 in a small in-process cache (TTL ``auth.key_cache_ttl``,
bounded size) and in MongoDB on a miss. The TTL is the bound within which a revoked
key or a suspended account is refused on every gateway process.
"""
from __future__ import annotations

import time
from collections import OrderedDict

from gateway.errors import APIError
from gateway.hookspecs import hookimpl
from gateway.store.keys import KEY_PREFIX, hash_key
from gateway.types import Principal

_INACTIVE = {"pending": "Your account is awaiting approval.",
             "suspended": "Your account is suspended.",
             "rejected": "Your account application was not approved.",
             "closed": "Your account is closed."}


class KeyCache:
    """A bounded LRU of sha256 -> (principal or error, expiry)."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._data: OrderedDict[str, tuple[object, float]] = OrderedDict()

    def get(self, sha: str):
        item = self._data.get(sha)
        if item is None or item[1] < time.monotonic():
            self._data.pop(sha, None)
            return None
        self._data.move_to_end(sha)
        return item[0]

    def put(self, sha: str, value) -> None:
        self._data[sha] = (value, time.monotonic() + self.ttl)
        self._data.move_to_end(sha)
        while len(self._data) > self.size:
            self._data.popitem(last=False)


class ApiKeyAuthenticator:
    """Resolves a bearer key to the account behind it (active accounts only)."""

    name = "api_key"

    def __init__(self, store, ttl: float, size: int) -> None:
        self.store = store
        self.cache = KeyCache(ttl, size)

    async def authenticate(self, request) -> Principal | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise APIError(401, "The Authorization header must be 'Bearer YOUR_KEY'.",
                           code="invalid_api_key")
        sha = hash_key(key)
        result = self.cache.get(sha)
        if result is None:
            result = await self._lookup(key, sha)
            self.cache.put(sha, result)
        if isinstance(result, APIError):
            raise result
        return result

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
        return Principal(account_id=account["_id"], tier=account.get("tier", ""),
                         status=status, key_id=doc["_id"],
                         roles=tuple(account.get("roles", ())), via="api_key")


@hookimpl
def register_authenticators(register, config, store):
    """Register the bearer API key authenticator."""
    register(ApiKeyAuthenticator(store, config.auth.key_cache_ttl, config.auth.key_cache_size))
