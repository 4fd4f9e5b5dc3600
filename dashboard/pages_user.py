"""Pages of a signed-in account: overview with usage, API keys, account settings,
data export and closing the account."""
from __future__ import annotations

import json
from datetime import UTC, datetime

from dashboard import first_admin, key_controls, notify
from dashboard.passwords import policy_error
from dashboard.usage_view import usage_summary
from dashboard.web import DashboardHandler, PageError


class OverviewHandler(DashboardHandler):
    """Tier, status and the last 30 days of usage (SVG chart and table)."""

    async def get(self) -> None:
        usage = await usage_summary(self.store, self.account["_id"])
        keys = await self.store.keys.for_account(self.account["_id"], include_revoked=False)
        quota = await key_controls.remaining(self.gateway, self.account["_id"],
                                             self.account.get("tier", ""))
        self.render("overview.html", usage=usage, active_keys=len(keys), quota=quota)


class KeysHandler(DashboardHandler):
    """GET: list keys with their controls and the quota left today. POST: create one
    (optionally with controls; admins may give it admin API scopes); the key is shown in
    this response only."""

    async def get(self) -> None:
        await self._page()

    async def context(self) -> dict:
        keys = await self.store.keys.for_account(self.account["_id"])
        tier = key_controls.tier_of(self.gateway.config, self.account.get("tier", ""))
        quota = await key_controls.remaining(self.gateway, self.account["_id"],
                                             self.account.get("tier", ""))
        return {"keys": keys, "tier": tier, "quota": quota, "new_key": None,
                "tier_models": key_controls.tier_models(self.gateway.config, tier),
                "scopes": key_controls.SCOPES, "back": "/dashboard/keys"}

    async def _page(self, new_key: str | None = None, status: int = 200) -> None:
        self.set_status(status)
        self.render("keys.html", **{**await self.context(), "new_key": new_key})

    async def _refuse(self, status: int, message: str, **kw) -> None:
        raise PageError(status, message, template="keys.html", **kw, **await self.context())

    async def post(self) -> None:
        name = self.arg("name", 200).strip()
        if not name or len(name) > 64:
            await self._refuse(400, "Give the key a name of 1 to 64 characters.",
                               param="name", code="invalid_name")
        active = await self.store.keys.for_account(self.account["_id"], include_revoked=False)
        if len(active) >= self.dash.cfg.max_keys:
            await self._refuse(400, f"You can have at most {self.dash.cfg.max_keys} active "
                                    "keys; revoke one first.", param="name",
                               code="too_many_keys")
        scope = self.arg("scope", 40)
        scopes = {"": [], "admin:read": ["admin:read"],
                  "admin:write": ["admin:read", "admin:write"]}.get(scope)
        if scopes is None or (scopes and not self.is_admin):
            await self._refuse(400 if scopes is None else 403, "Unknown or forbidden scope.",
                               param="scope", code="invalid_scope")
        try:
            controls = key_controls.parse_controls(key_controls.form_controls(self),
                                                   self.gateway.config,
                                                   self.account.get("tier", ""))
        except key_controls.ControlError as exc:
            await self._refuse(400, str(exc), param=exc.param, code="invalid_key_controls")
        key, doc = await self.store.keys.create(self.account["_id"], name, scopes=scopes,
                                                **controls)
        if scopes:
            await self.store.audit.record(self.account["_id"], self.account["email"],
                                          "create_admin_key", self.account["_id"],
                                          key=doc["prefix"], scopes=scopes)
        await self._page(new_key=key, status=201)


class KeyControlsHandler(KeysHandler):
    """POST key_id + controls: change one of the account's own keys (within the tier;
    applied everywhere within auth.key_cache_ttl)."""

    async def get(self) -> None:
        raise PageError(405, "GET is not allowed here.", code="method_not_allowed")

    async def post(self) -> None:
        key = await self.store.keys.get(self.arg("key_id", 100), self.account["_id"])
        if key is None or key.get("revoked_at"):
            await self._refuse(404, "No such active key.", param="key_id",
                               code="key_not_found")
        try:
            await key_controls.apply(self.gateway, None, key,
                                     key_controls.form_controls(self))
        except PageError as exc:
            await self._refuse(exc.api.status, exc.api.message, param=exc.api.param,
                               code=exc.api.code)
        await self.set_flash(f"Key {key['prefix']}…: limits saved.")
        self.redirect("/dashboard/keys", status=303)


class KeyRevokeHandler(DashboardHandler):
    """Revoke one of the account's keys (refused everywhere within auth.key_cache_ttl)."""

    async def post(self) -> None:
        key_id = self.arg("key_id", 100)
        n = await self.store.keys.revoke(key_id, account_id=self.account["_id"]) \
            if key_id.startswith("key_") else 0
        if not n:
            raise PageError(404, "No such active key.", param="key_id", code="key_not_found")
        await self.set_flash("Key revoked.")
        self.redirect("/dashboard/keys", status=303)


class AccountHandler(DashboardHandler):
    """Settings: change password, export data, close the account."""

    async def get(self) -> None:
        self.render("account.html")


class PasswordHandler(DashboardHandler):
    """Change the password (needs the current one); other sessions are ended."""

    async def post(self) -> None:
        current, new = self.arg("current_password"), self.arg("new_password")
        # The current password is guessed no faster here than at sign-in: same counters.
        throttle = self.dash.throttle(self.store)
        attempt = await throttle.reserve(self.account["email"], self.client_ip())
        if not attempt.allowed:
            raise PageError(429, "Too many wrong passwords. Try again later.",
                            code="too_many_attempts", template="account.html")
        try:
            ok, _ = await self.dash.passwords.verify(self.account.get("password_hash"),
                                                     current)
        except BaseException:
            await throttle.release(attempt)
            raise
        if ok:
            await throttle.release(attempt)
        else:
            raise PageError(400, "The current password is not correct.",
                            param="current_password", code="invalid_password",
                            template="account.html")
        problem = policy_error(new, self.account["email"], self.dash.cfg.password_min_length)
        if problem:
            raise PageError(400, problem, param="new_password", code="weak_password",
                            template="account.html")
        await self.store.accounts.update(self.account["_id"],
                                         password_hash=await self.dash.passwords.hash(new))
        await first_admin.forget_if_changed(self.gateway.config, self.dash.passwords,
                                            self.account.get("password_hash"))
        await self.store.sessions.delete_for_account(self.account["_id"])
        await self.start_session(self.account["_id"])
        await notify.send(self, self.dash, "password_changed", self.account)
        await self.set_flash("Password changed. Other sessions were signed out.")
        self.redirect("/dashboard/account", status=303)


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class ExportHandler(DashboardHandler):
    """Everything held about the account, as a JSON download."""

    async def get(self) -> None:
        data = await self.store.privacy.export(self.account["_id"])
        data["exported_at"] = datetime.now(UTC)
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Disposition",
                        'attachment; filename="allyoucantoken-export.json"')
        self.finish(json.dumps(data, default=_json_default, indent=2))


class CloseHandler(DashboardHandler):
    """Close the account: keys revoked, sessions ended, email sent; data goes after the
    retention period."""

    async def post(self) -> None:
        ok, _ = await self.dash.passwords.verify(self.account.get("password_hash"),
                                                 self.arg("password"))
        if not ok or self.arg("confirm", 10) != "yes":
            raise PageError(400, "Enter your password and tick the box to close your "
                                 "account.", param="password", code="confirmation_required",
                            template="account.html")
        if self.is_admin:
            raise PageError(400, "Admin accounts cannot close themselves here.",
                            code="admin_account", template="account.html")
        account = self.account
        await close_account(self.gateway, self.dash, account)
        await self.end_session()
        days = _retention_days(self.gateway.config)
        self.render("message.html", title="Account closed",
                    message=f"Your account is closed and its API keys are revoked. Your "
                            f"personal data will be deleted or anonymised after "
                            f"{days:g} days.")


def _retention_days(config) -> float:
    from dashboard.retention import RetentionConfig
    return RetentionConfig.from_config(config).days


async def close_account(gateway, dash, account: dict) -> None:
    """Status closed, every key revoked at once, every session ended, email sent."""
    store = gateway.store
    await store.accounts.set_status(account["_id"], "closed")
    await store.keys.revoke_all(account["_id"])
    await store.sessions.delete_for_account(account["_id"])
    await notify.send(gateway, dash, "closed", account, days=_retention_days(gateway.config))

