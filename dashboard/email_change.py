"""Changing an account's email address, and undoing it from the old address.

An admin corrects an address (dashboard or admin API; an admin's own or another admin's
address only on the dashboard, with the acting admin's password). The new address is
told; the old one gets a notice with an undo code. The code (only its SHA-256 is kept,
on the account, until it expires) gives the account its old address back, signs out
every session, cancels reset codes, revokes the API keys created since the change and,
when the password was changed since, clears it (a new one is chosen through "Forgot
password" at the restored address). This closes the takeover path: change a victim's
address, ask for a reset to it, sign in, mint a key."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from dashboard import notify
from dashboard.web import PageError
from gateway.store import DuplicateKeyError

MAX_PENDING = 5          # undoable changes of one account at a time


def mask_email(address: str) -> str:
    """``ad***@example.com``: enough to recognise in the audit log, which outlives the
    account's erasure, without keeping the whole address."""
    local, _, domain = address.partition("@")
    return f"{local[:2]}***@{domain}"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _pending(doc: dict, now: datetime) -> list[dict]:
    return [r for r in doc.get("email_undo") or () if r.get("expires_at") and
            r["expires_at"] > now]


async def change_email(gateway, dash, actor: dict, target: dict, email: str) -> dict:
    """Set ``target``'s address to ``email`` (checked, audited, both addresses told; the
    old one with an undo code). Returns the updated account."""
    from dashboard.pages_auth import EMAIL
    if not EMAIL.match(email):
        raise PageError(400, "Enter a valid email address.", param="email",
                        code="invalid_email")
    old = target["email"]
    if email == old:
        raise PageError(400, "That is already the account's address.", param="email",
                        code="same_email")
    now = datetime.now(UTC)
    pending = _pending(target, now)
    if len(pending) >= MAX_PENDING:
        raise PageError(429, "This account's address was changed too often recently; "
                             "wait until earlier changes can no longer be undone.",
                        param="email", code="too_many_email_changes")
    try:
        updated = await gateway.store.accounts.change_email(target["_id"], email)
    except DuplicateKeyError:
        raise PageError(409, "Another account has that address.", param="email",
                        code="email_taken") from None
    secret = secrets.token_urlsafe(32)
    ttl = dash.cfg.email_undo_ttl
    pending.append({"hash": _sha(secret), "old": old, "new": email, "at": now,
                    "expires_at": now + timedelta(seconds=ttl),
                    "password": _sha(target.get("password_hash") or "")})
    updated = await gateway.store.accounts.update(target["_id"], email_undo=pending)
    await gateway.store.audit.record(actor["_id"], actor["email"], "change_email",
                                     target["_id"], email_from=mask_email(old),
                                     email_to=mask_email(email))
    code = f"{target['_id']}.{secret}"
    if dash.cfg.public_url:
        how = f"open this link:\n{dash.cfg.public_url.rstrip('/')}/dashboard/email/undo" \
              f"?token={code}"
    else:
        how = f"open /dashboard/email/undo on the dashboard and enter this code:\n{code}"
    days = max(1, round(ttl / 86400))
    await notify.send(gateway, dash, "email_changed_old", {**target, "email": old},
                      old=old, new=email, how=how, days=days)
    await notify.send(gateway, dash, "email_changed", {**target, "email": email},
                      old=old, new=email)
    return updated


async def undo_email_change(gateway, dash, code: str) -> dict:
    """Undo the change that ``code`` was mailed about (see the module docstring).
    Returns the account as it is now; raises PageError for a bad or expired code."""
    store = gateway.store
    invalid = PageError(400, "This undo code is not valid or has expired.", param="token",
                        code="invalid_token")
    account_id, _, secret = code.partition(".")
    if not account_id.startswith("acc_") or not secret or len(account_id) > 80:
        raise invalid
    account = await store.accounts.get(account_id)
    if account is None or account.get("status") == "closed":
        raise invalid
    now = datetime.now(UTC)
    wanted = _sha(secret)
    record = next((r for r in _pending(account, now)
                   if hmac.compare_digest(r.get("hash", ""), wanted)), None)
    if record is None:
        raise invalid
    try:
        await store.accounts.change_email(account_id, record["old"])
    except DuplicateKeyError:
        raise PageError(409, "Another account has this address now; contact the "
                             "operator.", param="token", code="email_taken") from None
    fields: dict = {"email_undo": []}
    password_changed = _sha(account.get("password_hash") or "") != record.get("password")
    if password_changed:
        fields["password_hash"] = None
    account = await store.accounts.update(account_id, **fields)
    await store.sessions.delete_for_account(account_id)
    await store.resets.delete_for_account(account_id)
    revoked = 0
    for key in await store.keys.for_account(account_id, include_revoked=False):
        created = key.get("created_at")
        if created is not None and created >= record["at"]:
            revoked += await store.keys.revoke(key["_id"], account_id=account_id)
    await store.audit.record(account_id, mask_email(record["old"]), "undo_email_change",
                             account_id, email_from=mask_email(record["new"]),
                             email_to=mask_email(record["old"]), keys_revoked=revoked,
                             password_cleared=password_changed)
    note = ("\n\nThe password was changed after the address was: it no longer works. "
            "Choose a new one with \"Forgot password\" on the sign-in page."
            if password_changed else "")
    await notify.send(gateway, dash, "email_change_undone", account, new=record["new"],
                      revoked=revoked, password=note)
    return account
