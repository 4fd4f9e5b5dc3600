"""Admin pages: accounts by status, approve/reject/suspend/reactivate/close, change
tier, and the audit log. Every action is audited (who, what, when; no secrets) and
every status change emails the account holder."""
from __future__ import annotations

from dashboard import notify
from dashboard.pages_user import close_account
from dashboard.web import DashboardHandler, PageError
from gateway.store.accounts import STATUSES

# action -> (statuses it applies to, new status, email kind)
ACTIONS = {
    "approve": (("pending",), "active", "approved"),
    "reject": (("pending",), "rejected", "rejected"),
    "suspend": (("active",), "suspended", "suspended"),
    "reactivate": (("suspended", "rejected"), "active", "reactivated"),
    "close": (("pending", "active", "suspended", "rejected"), "closed", "closed"),
}


class AdminAccountsHandler(DashboardHandler):
    """Accounts, filtered by status (pending first)."""

    access = "admin"

    async def get(self) -> None:
        status = self.get_query_argument("status", "pending")
        if status not in (*STATUSES, "all"):
            raise PageError(400, "Unknown status filter.", param="status",
                            code="invalid_status")
        accounts = await self.store.accounts.list(None if status == "all" else status)
        counts = {s: await self.store.accounts.count(s) for s in STATUSES}
        self.render("admin.html", accounts=accounts, status=status, counts=counts,
                    actions=ACTIONS, tiers=list(self.gateway.config.tiers))


class AdminStatusHandler(DashboardHandler):
    """POST action=approve|reject|suspend|reactivate|close for one account."""

    access = "admin"

    async def post(self, account_id: str) -> None:
        action = self.arg("action", 20)
        if action not in ACTIONS:
            raise PageError(400, "Unknown action.", param="action", code="invalid_action")
        target = await self.store.accounts.get(account_id)
        if target is None:
            raise PageError(404, "No such account.", code="account_not_found")
        if target["_id"] == self.account["_id"]:
            raise PageError(400, "Admins cannot change their own status.",
                            code="own_account")
        allowed, new_status, kind = ACTIONS[action]
        if target["status"] not in allowed:
            raise PageError(409, f"Cannot {action} an account that is {target['status']}.",
                            param="action", code="invalid_transition")
        if new_status == "closed":
            await close_account(self.gateway, self.dash, target)
        else:
            await self.store.accounts.set_status(target["_id"], new_status)
            if new_status != "active":
                await self.store.sessions.delete_for_account(target["_id"])
            await notify.send(self, self.dash, kind, target)
        await self.store.audit.record(self.account["_id"], self.account["email"], action,
                                      target["_id"], status_from=target["status"],
                                      status_to=new_status)
        await self.set_flash(f"{target['email']}: {new_status}.")
        self.redirect(f"/dashboard/admin?status={target['status']}", status=303)


class AdminTierHandler(DashboardHandler):
    """POST tier=<name>: move an account to another tier."""

    access = "admin"

    async def post(self, account_id: str) -> None:
        tier = self.arg("tier", 100)
        if tier not in self.gateway.config.tiers:
            raise PageError(400, "Unknown tier.", param="tier", code="invalid_tier")
        target = await self.store.accounts.get(account_id)
        if target is None:
            raise PageError(404, "No such account.", code="account_not_found")
        await self.store.accounts.update(target["_id"], tier=tier)
        await self.store.audit.record(self.account["_id"], self.account["email"],
                                      "change_tier", target["_id"],
                                      tier_from=target.get("tier"), tier_to=tier)
        await self.set_flash(f"{target['email']}: tier {tier}.")
        self.redirect(f"/dashboard/admin?status={target['status']}", status=303)


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
