"""Per-key controls: checking what a user (or admin) asks for against the key's tier,
and reading what is left of the quota today. Shared by the dashboard pages, the admin
API and ``GET /v1/me``."""
from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime, time, timedelta
from typing import Any

from dashboard.web import PageError
from gateway.store.keys import KEY_LIMITS

MAX_CIDRS = 32
SCOPES = ("admin:read", "admin:write")


class ControlError(ValueError):
    """A control value that cannot be accepted; ``param`` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def tier_of(config, name: str):
    return config.tiers.get(name) or config.tiers[config.limits.default_tier]


def tier_models(config, tier) -> list[str]:
    names = [m.name for m in config.models]
    return names if "*" in tier.models else [n for n in names if n in tier.models]


def parse_expiry(value: Any, now: datetime | None = None) -> datetime | None:
    """"" or None: no expiry. A date (YYYY-MM-DD): the key stops working at 00:00 UTC
    that day. An ISO 8601 date-time (UTC when it has no offset). Must be in the future."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ControlError("expires_at", "expires_at must be a date (YYYY-MM-DD) or an ISO "
                                         "8601 date-time.")
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
            when = datetime.combine(datetime.strptime(value.strip(), "%Y-%m-%d").date(),
                                    time(0), UTC)
        else:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):   # OverflowError: 9999-12-31T23:59-01:00
        raise ControlError("expires_at", "expires_at must be a date (YYYY-MM-DD) or an ISO "
                                         "8601 date-time.") from None
    if when <= (now or datetime.now(UTC)):
        raise ControlError("expires_at", "The expiry must be in the future.")
    return when


def parse_cidrs(value: Any) -> list[str]:
    """A list, or a string separated by commas, spaces or new lines, of addresses or
    CIDR blocks (normalised: 10.1.2.3/8 -> 10.0.0.0/8)."""
    items = re.split(r"[\s,]+", value.strip()) if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ControlError("allowed_cidrs", "allowed_cidrs must be a list of CIDR blocks.")
    items = [i.strip() for i in items if i.strip()]
    if len(items) > MAX_CIDRS:
        raise ControlError("allowed_cidrs", f"At most {MAX_CIDRS} CIDR blocks per key.")
    out = []
    for item in items:
        try:
            net = str(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ControlError("allowed_cidrs", f"{item[:60]!r} is not an IP address or "
                                                "CIDR block.") from None
        if net not in out:
            out.append(net)
    return out


def parse_models(value: Any, allowed: list[str]) -> list[str]:
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s,]+", value.strip()) if v]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ControlError("allowed_models", "allowed_models must be a list of model names.")
    for name in value:
        if name not in allowed:
            raise ControlError("allowed_models", f"The model `{name[:100]}` is not available "
                                                 "in this account's tier.")
    return sorted(set(value))


def parse_limits(value: Any, tier) -> dict[str, int]:
    """Per-key limits: whole numbers, 0 or absent for "the tier's"; never above a limit
    the tier sets."""
    if not isinstance(value, dict):
        raise ControlError("limits", "limits must be an object.")
    unknown = set(value) - set(KEY_LIMITS)
    if unknown:
        raise ControlError("limits", f"Unknown limit {sorted(unknown)[0][:60]!r}; known: "
                                     f"{', '.join(KEY_LIMITS)}.")
    out = {}
    for name in KEY_LIMITS:
        raw = value.get(name)
        if raw in (None, ""):
            continue
        try:
            n = int(raw) if not isinstance(raw, (bool, float)) else None
        except (TypeError, ValueError):
            n = None
        if n is None or n < 0 or n > 10**12:
            raise ControlError(name, f"{name} must be a whole number of 0 or more.")
        cap = getattr(tier, name)
        if cap and n > cap:
            raise ControlError(name, f"{name} can be at most {cap} (the tier's limit).")
        if n:
            out[name] = n
    return out


def parse_controls(raw: dict[str, Any], config, tier_name: str,
                   partial: bool = False) -> dict[str, Any]:
    """The stored form of the controls in ``raw`` (only the fields present when
    ``partial``). Raises ControlError."""
    tier = tier_of(config, tier_name)
    out: dict[str, Any] = {}
    if not partial or "expires_at" in raw:
        out["expires_at"] = parse_expiry(raw.get("expires_at"))
    if not partial or "allowed_models" in raw:
        out["allowed_models"] = parse_models(raw.get("allowed_models") or [],
                                             tier_models(config, tier))
    if not partial or "allowed_cidrs" in raw:
        out["allowed_cidrs"] = parse_cidrs(raw.get("allowed_cidrs") or [])
    if not partial or "limits" in raw:
        out["limits"] = parse_limits(raw.get("limits") or {}, tier)
    return out


def key_info(key: dict) -> dict[str, Any]:
    """A key as the APIs show it (never its hash)."""
    def iso(v):
        return v.isoformat() if isinstance(v, datetime) else v
    return {"id": key["_id"], "prefix": key["prefix"], "name": key.get("name", ""),
            "created_at": iso(key.get("created_at")), "revoked_at": iso(key.get("revoked_at")),
            "last_used_at": iso(key.get("last_used_at")),
            "expires_at": iso(key.get("expires_at")),
            "allowed_models": list(key.get("allowed_models") or []),
            "allowed_cidrs": list(key.get("allowed_cidrs") or []),
            "limits": {n: (key.get("limits") or {}).get(n) or None for n in KEY_LIMITS},
            "scopes": list(key.get("scopes") or [])}


def tier_info(config, tier_name: str) -> dict[str, Any]:
    tier = tier_of(config, tier_name)
    return {"name": tier_name, "requests_per_minute": tier.requests_per_minute or None,
            "tokens_per_minute": tier.tokens_per_minute or None,
            "tokens_per_day": tier.tokens_per_day or None,
            "concurrent_streams": tier.concurrent_streams or None,
            "max_tokens": tier.max_tokens or None, "models": tier_models(config, tier)}


async def remaining(gateway, account_id: str, tier_name: str,
                    key: dict | None = None) -> dict[str, Any]:
    """Remaining quota this minute and today (see ``TierLimiter.remaining``); every
    window unlimited when the tier limiter is off."""
    limiter = next((lim for lim in gateway.limiters if getattr(lim, "name", "") == "tiers"),
                   None)
    now = datetime.now(UTC)
    resets = {"minute": (now.replace(second=0, microsecond=0) + timedelta(minutes=1)),
              "day": (now.replace(hour=0, minute=0, second=0, microsecond=0)
                      + timedelta(days=1))}
    if limiter is None:
        names = ("requests_per_minute", "tokens_per_minute", "tokens_per_day")
        out: dict[str, Any] = {"account": dict.fromkeys(names)}
        if key:
            out["key"] = dict.fromkeys(names)
    else:
        out = await limiter.remaining(account_id, tier_name, key["_id"] if key else None,
                                      (key or {}).get("limits") or {})
    out["resets"] = {k: v.isoformat() for k, v in resets.items()}
    return out


async def apply(gateway, actor: dict | None, key: dict, raw: dict,
                partial: bool = False) -> dict:
    """Check ``raw`` against the tier of the key's account and store it; audited when
    an admin (``actor``) changes someone's key."""
    account = await gateway.store.accounts.get(key["account_id"])
    try:
        controls = parse_controls(raw, gateway.config, (account or {}).get("tier", ""),
                                  partial)
    except ControlError as exc:
        raise PageError(400, str(exc), param=exc.param, code="invalid_key_controls") from None
    updated = await gateway.store.keys.set_controls(key["_id"], **controls)
    if updated is None:
        raise PageError(404, "No such active key.", param="key_id", code="key_not_found")
    if actor is not None and actor["_id"] != key["account_id"]:
        shown = {k: (v.isoformat() if hasattr(v, "isoformat") else v)
                 for k, v in controls.items()}
        await gateway.store.audit.record(actor["_id"], actor["email"], "key_controls",
                                         key["account_id"], key=key["prefix"], **shown)
    return updated


def form_controls(handler) -> dict:
    """The key-control fields of a submitted form."""
    return {"expires_at": handler.arg("expires_at", 40),
            "allowed_models": handler.get_body_arguments("allowed_models")[:200],
            "allowed_cidrs": handler.arg("allowed_cidrs", 4000),
            "limits": {n: handler.arg(n, 20) for n in
                       ("requests_per_minute", "tokens_per_minute", "tokens_per_day")}}
