"""Registration, sign-in and sign-out. Messages never reveal whether an email exists."""
from __future__ import annotations

import re

from dashboard import first_admin, notify
from dashboard.deferred import defer
from dashboard.email_change import undo_email_change
from dashboard.passwords import policy_error
from dashboard.throttle import email_key, take_slot
from dashboard.web import DashboardHandler, PageError

EMAIL = re.compile(r"^[^@\s<>\"']{1,64}@[^@\s<>\"']{1,189}\.[^@\s<>\"'.]{2,}$")

GENERIC_LOGIN_ERROR = "Incorrect email or password."
_INACTIVE = {"pending": "Your account is waiting for approval by an administrator.",
             "suspended": "Your account is suspended.",
             "rejected": "Your account application was not approved.",
             "closed": GENERIC_LOGIN_ERROR}


class RootHandler(DashboardHandler):
    """``/``: sends visitors to the dashboard."""

    access = "public"

    def get(self) -> None:
        self.redirect("/dashboard")


class RegisterHandler(DashboardHandler):
    """GET: the form. POST: create a pending account and send the confirmation email."""

    access = "public"

    async def get(self) -> None:
        await self.ensure_session()
        self.render("register.html", tiers=list(self.gateway.config.tiers), email="",
                    tier=self.gateway.config.limits.default_tier)

    async def post(self) -> None:
        email = self.arg("email", 254).strip().lower()
        password = self.arg("password")
        tier = self.arg("tier", 100) or self.gateway.config.limits.default_tier
        form = {"template": "register.html", "tiers": list(self.gateway.config.tiers),
                "email": email, "tier": tier}
        if not EMAIL.match(email):
            raise PageError(400, "Enter a valid email address.", param="email",
                            code="invalid_email", **form)
        if tier not in self.gateway.config.tiers:
            raise PageError(400, "Choose one of the offered tiers.", param="tier",
                            code="invalid_tier", **form)
        problem = policy_error(password, email, self.dash.cfg.password_min_length)
        if problem:
            raise PageError(400, problem, param="password", code="weak_password", **form)
        if not await take_slot(self.store.counters, "register-ip", self.client_ip(),
                               self.dash.cfg.register_max_per_ip, 3600):
            raise PageError(429, "Too many registrations from your network; try again "
                                 "later.", code="too_many_registrations", **form)
        # Both paths do the same work before answering: one argon2 hash and one insert
        # attempt (the unique email index refuses a taken address), padded to the same
        # duration (a refused insert is a little faster than a written one). The mail,
        # and the look-up of an existing owner, happen after the answer has been sent.
        password_hash = await self.dash.passwords.hash(password)
        async with self.dash.register_floor.pad():
            account = await self.store.accounts.create_if_absent(
                email, tier=tier, status="pending", password_hash=password_hash,
                status_changed_at=None)
        if account is not None:
            defer(self.gateway, "registration mail",
                  notify.send(self.gateway, self.dash, "registered", account, tier=tier))
        else:
            defer(self.gateway, "registration mail", _tell_owner(self.gateway, self.dash, email))
        self.render("message.html", title="Check your email",
                    message="Thank you. If this address can be used for a new account, we "
                            "have sent it a confirmation. An administrator reviews every "
                            "application; you will get an email when yours is decided.")


class LoginHandler(DashboardHandler):
    """Sign in with email and password (throttled per account and per IP)."""

    access = "public"

    async def get(self) -> None:
        if self.account:
            return self.redirect("/dashboard")
        await self.ensure_session()
        self.render("login.html", email="")

    async def post(self) -> None:
        email = self.arg("email", 254).strip().lower()
        password = self.arg("password")
        form = {"template": "login.html", "email": email}
        ip = self.client_ip()
        throttle = self.dash.throttle(self.store)
        attempt = await throttle.reserve(email, ip)   # counted before any hashing
        if not attempt.allowed:
            minutes = max(1, int(attempt.wait // 60) + 1)
            raise PageError(429, f"Too many sign-in attempts. Try again in {minutes} "
                                 "minute(s).", code="too_many_attempts", **form)
        try:
            account = await self.store.accounts.by_email(email) if email else None
            ok, new_hash = await self.dash.passwords.verify(
                account.get("password_hash") if account else None, password)
        except BaseException:
            await throttle.release(attempt)               # nothing was checked
            raise
        if not ok:                                        # the reservation stays counted
            raise PageError(401, GENERIC_LOGIN_ERROR, code="invalid_credentials", **form)
        await throttle.release(attempt)                   # right password: not a failure
        if new_hash:
            await self.store.accounts.update(account["_id"], password_hash=new_hash)
        status = account.get("status")
        if status != "active":
            raise PageError(403 if status != "closed" else 401, _INACTIVE.get(
                status, GENERIC_LOGIN_ERROR), code="account_inactive", **form)
        await self.start_session(account["_id"])
        self.redirect("/dashboard", status=303)


class LogoutHandler(DashboardHandler):
    """Sign out: the session is destroyed server-side and the cookie cleared."""

    access = "public"

    async def post(self) -> None:
        await self.end_session()
        self.redirect("/dashboard/login", status=303)


class ForgotHandler(DashboardHandler):
    """Ask for a password-reset email. The answer is the same whether or not the email
    belongs to an account."""

    access = "public"

    async def get(self) -> None:
        await self.ensure_session()
        self.render("forgot.html", email="")

    async def post(self) -> None:
        email = self.arg("email", 254).strip().lower()
        if not EMAIL.match(email):
            raise PageError(400, "Enter a valid email address.", param="email",
                            code="invalid_email", template="forgot.html", email=email)
        cfg, counters = self.dash.cfg, self.store.counters
        if not await take_slot(counters, "reset-ip", self.client_ip(),
                               cfg.register_max_per_ip, 3600):
            raise PageError(429, "Too many requests from your network; try again later.",
                            code="too_many_requests", template="forgot.html", email=email)
        # Everything that depends on the account (look-up, code, mail) happens after the
        # answer is sent: the response time does not tell whether the account exists.
        defer(self.gateway, "password reset", _send_reset(self.gateway, self.dash, email))
        self.render("message.html", title="Check your email",
                    message="If this address belongs to an active account, we have sent it "
                            "a link to reset the password.")


async def _tell_owner(gateway, dash, email: str) -> None:
    """Someone registered an address that has an account: tell its owner."""
    existing = await gateway.store.accounts.by_email(email)
    if existing is not None:
        await notify.send(gateway, dash, "exists", existing)


async def _send_reset(gateway, dash, email: str) -> None:
    """Mail a reset code to an active account (at most 3 per address per hour)."""
    cfg, store = dash.cfg, gateway.store
    account = await store.accounts.by_email(email)
    if account is None or account.get("status") != "active" or \
            not await take_slot(store.counters, "reset-email", email_key(email), 3, 3600):
        return
    token = await store.resets.create(account["_id"], cfg.reset_ttl)
    if cfg.public_url:
        how = f"Open this link to choose a new password:\n" \
              f"{cfg.public_url.rstrip('/')}/dashboard/reset?token={token}"
    else:
        how = f"Open /dashboard/reset on the dashboard and enter this code:\n{token}"
    await notify.send(gateway, dash, "reset", account, how=how,
                      minutes=int(cfg.reset_ttl // 60))


class ResetHandler(DashboardHandler):
    """Choose a new password with a reset code (single use); every session ends."""

    access = "public"

    async def get(self) -> None:
        await self.ensure_session()
        self.render("reset.html", token=self.get_query_argument("token", "")[:100])

    async def post(self) -> None:
        token, password = self.arg("token", 100).strip(), self.arg("password")
        form = {"template": "reset.html", "token": token}
        pending = await self.store.resets.peek(token) if token else None
        account = await self.store.accounts.get(pending["account_id"]) if pending else None
        if account is None or account.get("status") != "active":
            raise PageError(400, "This reset code is not valid or has expired; ask for a "
                                 "new one.", param="token", code="invalid_token", **form)
        problem = policy_error(password, account["email"], self.dash.cfg.password_min_length)
        if problem:
            raise PageError(400, problem, param="password", code="weak_password", **form)
        if await self.store.resets.use(token) != account["_id"]:  # used twice at once
            raise PageError(400, "This reset code is not valid or has expired; ask for a "
                                 "new one.", param="token", code="invalid_token", **form)
        await self.store.accounts.update(account["_id"],
                                         password_hash=await self.dash.passwords.hash(password))
        await first_admin.forget_if_changed(self.gateway.config, self.dash.passwords,
                                            account.get("password_hash"))
        await self.store.sessions.delete_for_account(account["_id"])
        await notify.send(self, self.dash, "password_changed", account)
        self.render("message.html", title="Password changed",
                    message="Your password is changed and every session was signed out. "
                            "Sign in with the new password.")


class EmailUndoHandler(DashboardHandler):
    """Undo an email change with the code mailed to the old address (GET: the form,
    filled from the link; POST: undo). Public: the old address's owner may no longer be
    able to sign in."""

    access = "public"

    async def get(self) -> None:
        await self.ensure_session()
        self.render("email_undo.html", token=self.get_query_argument("token", "")[:200])

    async def post(self) -> None:
        token = self.arg("token", 200).strip()
        if not await take_slot(self.store.counters, "email-undo-ip", self.client_ip(),
                               self.dash.cfg.register_max_per_ip, 3600):
            raise PageError(429, "Too many requests from your network; try again later.",
                            code="too_many_requests", template="email_undo.html",
                            token=token)
        try:
            account = await undo_email_change(self.gateway, self.dash, token)
        except PageError as exc:
            exc.template, exc.context = "email_undo.html", {"token": token}
            raise
        await self.end_session()
        self.render("message.html", title="Email change undone",
                    message=f"The account has the address {account['email']} again. Every "
                            "session was signed out. If its password was changed meanwhile, "
                            "choose a new one with \"Forgot password\".")
