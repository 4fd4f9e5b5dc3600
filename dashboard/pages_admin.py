"""Admin pages: accounts searched by email and filtered by status and tier (newest first,
paged by cursor), one account's page (usage, keys and their controls, audit entries,
fair-use flag), approve/reject/suspend/reactivate/close, change tier, correct the email
address, and the audit log. Every action is audited (who, what, when; no secrets) and
every status or email change emails the account holder."""
from __future__ import annotations

from urllib.parse import urlencode

from dashboard import key_controls, notify
from dashboard.email_change import change_email, mask_email  # noqa: F401 - re-exported
from dashboard.pages_user import close_account
from dashboard.usage_view import usage_summary
from dashboard.web import DashboardHandler, PageError
from gateway.store.accounts import STATUSES

PAGE_SIZE = 50

# action -> (statuses it applies to, new status, email kind)
ACTIONS = {
    "approve": (("pending",), "active", "approved"),
    "reject": (("pending",), "rejected", "rejected"),
    "suspend": (("active",), "suspended", "suspended"),
    "reactivate": (("suspended", "rejected"), "active", "reactivated"),
    "close": (("pending", "active", "suspended", "rejected"), "closed", "closed"),
}


async def apply_action(gateway, dash, actor: dict, target: dict, action: str) -> str:
    """Run one status action on ``target`` (checks, mail, audit); returns the new status."""
    if action not in ACTIONS:
        raise PageError(400, "Unknown action.", param="action", code="invalid_action")
    if target["_id"] == actor["_id"]:
        raise PageError(400, "Admins cannot change their own status.", code="own_account")
    allowed, new_status, kind = ACTIONS[action]
    if target["status"] not in allowed:
        raise PageError(409, f"Cannot {action} an account that is {target['status']}.",
                        param="action", code="invalid_transition")
    store = gateway.store
    if new_status == "closed":
        await close_account(gateway, dash, target)
    else:
        await store.accounts.set_status(target["_id"], new_status)
        if new_status != "active":
            await store.sessions.delete_for_account(target["_id"])
        await notify.send(gateway, dash, kind, target)
    await store.audit.record(actor["_id"], actor["email"], action, target["_id"],
                             status_from=target["status"], status_to=new_status)
    return new_status


def action_for_status(current: str, wanted: str) -> str:
    """The action that moves an account from ``current`` to ``wanted`` (admin API)."""
    for name, (allowed, new_status, _) in ACTIONS.items():
        if new_status == wanted and current in allowed:
            return name
    if wanted not in STATUSES or wanted == "pending":
        raise PageError(400, "status must be one of active, suspended, rejected, closed.",
                        param="status", code="invalid_status")
    raise PageError(409, f"Cannot change an account that is {current} to {wanted}.",
                    param="status", code="invalid_transition")


async def apply_tier(gateway, actor: dict, target: dict, tier: str) -> None:
    if tier not in gateway.config.tiers:
        raise PageError(400, "Unknown tier.", param="tier", code="invalid_tier")
    await gateway.store.accounts.update(target["_id"], tier=tier)
    await gateway.store.audit.record(actor["_id"], actor["email"], "change_tier",
                                     target["_id"], tier_from=target.get("tier"), tier_to=tier)


def safe_back(value: str, default: str) -> str:
    """Where a form returns to: an admin page of this site only."""
    return value if value.startswith("/dashboard/admin") and "//" not in value \
        and "\\" not in value else default


class AdminAccountsHandler(DashboardHandler):
    """Accounts, newest first: search by email, filter by status and tier, next page by
    cursor. Without a search the pending accounts are shown first."""

    access = "admin"

    async def get(self) -> None:
        q = self.get_query_argument("q", "").strip()[:254]
        status = self.get_query_argument("status", "all" if q else "pending")
        tier = self.get_query_argument("tier", "")
        cursor = self.get_query_argument("cursor", "") or None
        if status not in (*STATUSES, "all"):
            raise PageError(400, "Unknown status filter.", param="status",
                            code="invalid_status")
        if tier and tier not in self.gateway.config.tiers:
            raise PageError(400, "Unknown tier filter.", param="tier", code="invalid_tier")
        filters = {"q": q, "status": None if status == "all" else status, "tier": tier or None}
        try:
            accounts, next_cursor = await self.store.accounts.search(
                **filters, limit=PAGE_SIZE, cursor=cursor)
        except (ValueError, OverflowError):   # a date beyond what can be stored
            raise PageError(400, "Malformed page cursor.", param="cursor",
                            code="invalid_cursor") from None
        matched = await self.store.accounts.count_matching(**filters)
        counts = {s: await self.store.accounts.count(s) for s in STATUSES}
        query = {"q": q, "status": status, "tier": tier}
        self.render("admin.html", accounts=accounts, status=status, counts=counts,
                    actions=ACTIONS, tiers=list(self.gateway.config.tiers), q=q, tier=tier,
                    next_cursor=next_cursor, paged=bool(cursor), matched=matched,
                    back=self.request.uri,
                    first_url="/dashboard/admin?" + urlencode(query),
                    next_url="/dashboard/admin?" + urlencode({**query, "cursor": next_cursor})
                    if next_cursor else "")


class AdminAccountHandler(DashboardHandler):
    """One account: facts, fair-use flag, actions, usage, keys with their controls,
    remaining quota today, and the audit entries about it."""

    access = "admin"

    async def get(self, account_id: str) -> None:
        target = await self.store.accounts.get(account_id)
        if target is None:
            raise PageError(404, "No such account.", code="account_not_found")
        usage = await usage_summary(self.store, account_id)
        keys = await self.store.keys.for_account(account_id)
        audit = list(reversed(await self.store.audit.for_target(account_id)))[:200]
        quota = await key_controls.remaining(self.gateway, account_id, target.get("tier", ""))
        tier = key_controls.tier_of(self.gateway.config, target.get("tier", ""))
        self.render("admin_account.html", target=target, usage=usage, keys=keys,
                    audit=audit, quota=quota, actions=ACTIONS,
                    tiers=list(self.gateway.config.tiers), tier=tier,
                    tier_models=key_controls.tier_models(self.gateway.config, tier),
                    back=f"/dashboard/admin/accounts/{account_id}")


class AdminStatusHandler(DashboardHandler):
    """POST action=approve|reject|suspend|reactivate|close for one account."""

    access = "admin"

    async def post(self, account_id: str) -> None:
        action = self.arg("action", 20)
        target = await self.store.accounts.get(account_id)
        if target is None:
            raise PageError(404, "No such account.", code="account_not_found")
        new_status = await apply_action(self.gateway, self.dash, self.account, target, action)
        await self.set_flash(f"{target['email']}: {new_status}.")
        self.redirect(safe_back(self.arg("back", 2000),
                                f"/dashboard/admin?status={target['status']}"), status=303)


class AdminTierHandler(DashboardHandler):
    """POST tier=<name>: move an account to another tier."""

    access = "admin"

    async def post(self, account_id: str) -> None:
        tier = self.arg("tier", 100)
        target = await self.store.accounts.get(account_id)
        if target is None:
            raise PageError(404, "No such account.", code="account_not_found")
        await apply_tier(self.gateway, self.account, target, tier)
        await self.set_flash(f"{target['email']}: tier {tier}.")
        self.redirect(safe_back(self.arg("back", 2000),
                                f"/dashboard/admin?status={target['status']}"), status=303)


class AdminEmailHandler(DashboardHandler):
    """POST email=<address>: correct an account's email address (audited; both the old
    and the new address are told, the old one with an undo code). An admin account's
    address (one's own too) changes only with the acting admin's password."""

    access = "admin"

    async def post(self, account_id: str) -> None:
        email = self.arg("email", 254).strip().lower()
        target = await self.store.accounts.get(account_id)
        if target is None:
            raise PageError(404, "No such account.", code="account_not_found")
        if "admin" in (target.get("roles") or ()):
            await self.reauthenticate(self.arg("current_password"))
        await change_email(self.gateway, self.dash, self.account, target, email)
        await self.set_flash(f"Email changed to {email}; both addresses were notified.")
        self.redirect(f"/dashboard/admin/accounts/{account_id}", status=303)


class AdminKeyControlsHandler(DashboardHandler):
    """POST key_id + controls: set any key's expiry, models, limits and IP allowlist
    (within its account's tier)."""

    access = "admin"

    async def post(self) -> None:
        key = await self.store.keys.get(self.arg("key_id", 100))
        if key is None:
            raise PageError(404, "No such key.", param="key_id", code="key_not_found")
        await key_controls.apply(self.gateway, self.account, key,
                                 key_controls.form_controls(self))
        await self.set_flash(f"Key {key['prefix']}…: controls saved.")
        self.redirect(f"/dashboard/admin/accounts/{key['account_id']}", status=303)


class AdminAuditHandler(DashboardHandler):
    """The most recent admin actions."""

    access = "admin"

    async def get(self) -> None:
        entries = await self.store.audit.recent(300)
        emails = {}
        for e in entries:
            tid = e.get("target_id")
            if tid and tid not in emails:
                acc = await self.store.accounts.get(tid)
                emails[tid] = acc["email"] if acc else "(erased)"
        self.render("audit.html", entries=entries, emails=emails)
