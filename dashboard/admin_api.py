"""JSON APIs of the dashboard plugin: ``GET /v1/me`` (the caller's key, tier limits and
quota left) and the admin API under ``/admin/api/`` for billing and automation,
authenticated by admin API keys with scopes (``admin:read`` for GET, ``admin:write``
for changes). Errors are OpenAI-style JSON. Neither is on the request hot path."""
from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard import key_controls
from dashboard.pages_admin import (PAGE_SIZE, action_for_status, apply_action, apply_tier,
                                   change_email)
from dashboard.usage_view import FIELDS
from dashboard.web import PageError
from gateway.relay import validation
from gateway.errors import APIError
from gateway.handlers.base import BaseAPIHandler
from gateway.store.accounts import STATUSES

MAX_PAGE = 500
MAX_DAYS = 400


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def account_info(doc: dict) -> dict[str, Any]:
    flag = doc.get("abuse_flag")
    return {"id": doc["_id"], "object": "account", "email": doc["email"],
            "tier": doc.get("tier"), "status": doc.get("status"),
            "roles": list(doc.get("roles") or []), "created_at": _iso(doc.get("created_at")),
            "status_changed_at": _iso(doc.get("status_changed_at")),
            "fair_use_flag": {k: _iso(v) for k, v in flag.items()} if flag else None}


class MeHandler(BaseAPIHandler):
    """GET /v1/me: the calling key (its controls), the tier's limits, and the quota the
    account and the key have left this minute and today."""

    def initialize(self, gateway, dashboard=None) -> None:
        super().initialize(gateway)

    async def get(self) -> None:
        principal = await self.require_principal()
        store = self.gateway.store
        account = await store.accounts.get(principal.account_id)
        if account is None:
            raise APIError(401, "Unknown account.", code="invalid_api_key")
        key = await store.keys.get(principal.key_id) if principal.key_id else None
        left = await key_controls.remaining(self.gateway, account["_id"],
                                            account.get("tier", ""), key)
        self.write_json({
            "object": "me",
            "account": {"id": account["_id"], "email": account["email"],
                        "tier": account.get("tier"), "status": account.get("status")},
            "key": key_controls.key_info(key) if key else None,
            "tier": key_controls.tier_info(self.gateway.config, account.get("tier", "")),
            "remaining": left})


class AdminAPIHandler(BaseAPIHandler):
    """Base of /admin/api: an admin's API key with the scope the method needs (a
    dashboard session does not count: these routes have no CSRF protection)."""

    def initialize(self, gateway, dashboard=None) -> None:
        super().initialize(gateway)
        self.dash = dashboard
        self.actor: dict | None = None

    async def prepare(self) -> None:
        principal = await self.require_principal()
        if principal.via != "api_key":
            raise APIError(401, "The admin API needs an admin API key: 'Authorization: "
                                "Bearer YOUR_KEY'.", code="missing_api_key")
        scope = "admin:read" if self.request.method in ("GET", "HEAD") else "admin:write"
        if not principal.is_admin:
            raise APIError(403, "This API is for administrators only.", code="admin_only")
        if scope not in principal.scopes:
            raise APIError(403, f"This API key lacks the `{scope}` scope.",
                           code="insufficient_scope")
        self.actor = await self.gateway.store.accounts.get(principal.account_id)
        if self.actor is None or "admin" not in self.actor.get("roles", ()):
            raise APIError(403, "This API is for administrators only.", code="admin_only")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, PageError):
            return self.send_api_error(exc.api)
        super().write_error(status_code, **kwargs)

    def log_exception(self, typ, value, tb) -> None:
        if not isinstance(value, PageError):
            super().log_exception(typ, value, tb)

    def json_body(self, allowed: set[str]) -> dict[str, Any]:
        self.check_body_size()
        # bounded depth, container count and finite numbers (a 400, never a 500)
        body = validation.loads(self.request.body or b"null")
        if not isinstance(body, dict) or not body:
            raise APIError(400, "The body must be a non-empty JSON object.",
                           code="invalid_body")
        unknown = set(body) - allowed
        if unknown:
            name = sorted(unknown)[0][:60]
            raise APIError(400, f"Unknown field `{name}`; known: {', '.join(sorted(allowed))}.",
                           param=name, code="unknown_parameter")
        return body

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get_query_argument(name, "")
        if raw == "":
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise APIError(400, f"`{name}` must be a whole number from {low} to {high}.",
                           param=name, code="invalid_parameter")
        return int(raw)

    async def target(self, account_id: str) -> dict:
        doc = await self.gateway.store.accounts.get(account_id)
        if doc is None:
            raise APIError(404, f"No account `{account_id}`.", code="account_not_found")
        return doc


class AccountsAPI(AdminAPIHandler):
    """GET /admin/api/accounts?q=&status=&tier=&limit=&cursor=: newest first."""

    async def get(self) -> None:
        q = self.get_query_argument("q", "")[:254]
        status = self.get_query_argument("status", "") or None
        tier = self.get_query_argument("tier", "") or None
        if status and status not in STATUSES:
            raise APIError(400, f"status must be one of {', '.join(STATUSES)}.",
                           param="status", code="invalid_status")
        if tier and tier not in self.gateway.config.tiers:
            raise APIError(400, "Unknown tier.", param="tier", code="invalid_tier")
        limit = self.int_arg("limit", PAGE_SIZE, 1, MAX_PAGE)
        try:
            docs, cursor = await self.gateway.store.accounts.search(
                q=q, status=status, tier=tier, limit=limit,
                cursor=self.get_query_argument("cursor", "") or None)
        except (ValueError, OverflowError):   # a date beyond what can be stored
            raise APIError(400, "Malformed cursor.", param="cursor",
                           code="invalid_cursor") from None
        self.write_json({"object": "list", "data": [account_info(d) for d in docs],
                         "has_more": cursor is not None, "next_cursor": cursor})


class AccountAPI(AdminAPIHandler):
    """GET one account (with its keys); PATCH {status, tier, email}."""

    async def get(self, account_id: str) -> None:
        doc = await self.target(account_id)
        keys = await self.gateway.store.keys.for_account(account_id)
        self.write_json({**account_info(doc), "keys": [key_controls.key_info(k) for k in keys]})

    async def patch(self, account_id: str) -> None:
        body = self.json_body({"status", "tier", "email"})
        for name in body:
            if not isinstance(body[name], str):
                raise APIError(400, f"`{name}` must be a string.", param=name,
                               code="invalid_type")
        doc = await self.target(account_id)
        if "email" in body and "admin" in (doc.get("roles") or ()):
            # A leaked admin:write key must not take over an admin (new address, reset
            # to it, sign in, mint a key): an admin's address changes only on the
            # dashboard, with the acting admin's password.
            raise APIError(403, "API keys cannot change an admin account (email, "
                                "password or roles). An admin changes it on the dashboard "
                                "and confirms with their password.", param="email",
                           code="admin_account_protected")
        if "email" in body:
            doc = await change_email(self.gateway, self.dash, self.actor, doc,
                                     body["email"].strip().lower())
        if "tier" in body and body["tier"] != doc.get("tier"):
            await apply_tier(self.gateway, self.actor, doc, body["tier"])
            doc = await self.target(account_id)
        if "status" in body and body["status"] != doc.get("status"):
            action = action_for_status(doc["status"], body["status"])
            await apply_action(self.gateway, self.dash, self.actor, doc, action)
            doc = await self.target(account_id)
        self.write_json(account_info(doc))


class UsageAPI(AdminAPIHandler):
    """GET /admin/api/accounts/{id}/usage?days=30: per UTC day (every day, zeros
    included) with per-model detail, from the daily rollups."""

    async def get(self, account_id: str) -> None:
        await self.target(account_id)
        days = self.int_arg("days", 30, 1, MAX_DAYS)
        today = datetime.now(UTC)
        docs = await self.gateway.store.usage.daily_for_account(account_id, days, today)
        labels = [(today - timedelta(days=days - 1 - i)).strftime("%Y-%m-%d")
                  for i in range(days)]
        per_day = {d: {"day": d, **dict.fromkeys(FIELDS, 0), "models": {}} for d in labels}
        for doc in docs:
            row = per_day.get(doc["day"])
            if row is None:
                continue
            model = row["models"].setdefault(doc.get("model") or "?",
                                             dict.fromkeys(FIELDS, 0))
            for f in FIELDS:
                v = int(doc.get(f, 0) or 0)
                row[f] += v
                model[f] += v
        total: dict[str, int] = defaultdict(int)
        for row in per_day.values():
            for f in FIELDS:
                total[f] += row[f]
        self.write_json({"object": "list", "account_id": account_id,
                         "data": list(per_day.values()), "total": dict(total)})


class KeyAPI(AdminAPIHandler):
    """GET one key; PATCH its controls {expires_at, allowed_models, allowed_cidrs,
    limits} (only the fields sent change; within the account's tier)."""

    async def get(self, key_id: str) -> None:
        key = await self.gateway.store.keys.get(key_id)
        if key is None:
            raise APIError(404, f"No key `{key_id}`.", code="key_not_found")
        self.write_json({**key_controls.key_info(key), "account_id": key["account_id"]})

    async def patch(self, key_id: str) -> None:
        body = self.json_body({"expires_at", "allowed_models", "allowed_cidrs", "limits"})
        key = await self.gateway.store.keys.get(key_id)
        if key is None:
            raise APIError(404, f"No key `{key_id}`.", code="key_not_found")
        updated = await key_controls.apply(self.gateway, self.actor, key, body, partial=True)
        self.write_json({**key_controls.key_info(updated), "account_id": key["account_id"]})


class AdminAPINotFound(BaseAPIHandler):
    """Unknown /admin/api URLs: a JSON 404."""

    def initialize(self, gateway, dashboard=None) -> None:
        super().initialize(gateway)

    def prepare(self) -> None:
        raise APIError(404, f"Unknown request URL: {self.request.method} {self.request.path}.",
                       code="unknown_url")


ACCOUNT_ID = r"(acc_[0-9a-f]{1,64})"
KEY_ID = r"(key_[0-9a-f]{1,64})"
ROUTES = [
    (r"/v1/me", MeHandler),
    (r"/admin/api/accounts", AccountsAPI),
    (rf"/admin/api/accounts/{ACCOUNT_ID}", AccountAPI),
    (rf"/admin/api/accounts/{ACCOUNT_ID}/usage", UsageAPI),
    (rf"/admin/api/keys/{KEY_ID}", KeyAPI),
    (r"/admin/api/.*", AdminAPINotFound),
]
