"""The dashboard's base handler: session loading, access control, CSRF, security
headers, and errors (HTML for browsers, OpenAI-style JSON for everyone else)."""
from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import tornado.web

from dashboard.config import DashboardConfig
from dashboard.deferred import TimeFloor
from dashboard.throttle import LoginThrottle
from gateway.http import tornado_compat
from gateway.errors import APIError, ErrorRenderer, internal_error
from gateway.http.net import client_ip
from plugins.auth.session import SAFE_METHODS, SessionAuthenticator, cookie_name, is_secure

log = logging.getLogger("allyoucantoken.dashboard")

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "templates")
STATIC = os.path.join(HERE, "static")

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def security_headers(handler: tornado.web.RequestHandler) -> None:
    handler.set_header("Content-Security-Policy", CSP)
    handler.set_header("X-Frame-Options", "DENY")
    handler.set_header("Referrer-Policy", "same-origin")
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("Cross-Origin-Opener-Policy", "same-origin")
    handler.clear_header("Server")


@dataclass
class Dashboard:
    """What every dashboard handler shares: config, password hasher, session loader."""

    cfg: DashboardConfig
    passwords: Any
    sessions: SessionAuthenticator | None = None
    register_floor: TimeFloor = field(default_factory=TimeFloor)

    def throttle(self, store) -> LoginThrottle:
        return LoginThrottle(store.counters, self.cfg.login_max_failures,
                             self.cfg.login_max_failures_ip, self.cfg.login_window)


def api_error(status: int, message: str, **kw: Any) -> APIError:
    """An APIError whose type is a client error for every 4xx status."""
    kind = "invalid_request_error" if 400 <= status < 500 and status not in (
        401, 403, 404, 429) else None
    return APIError(status, message, type=kind, **kw)


class PageError(Exception):
    """A refused request: re-rendered as a page for browsers, JSON for API clients."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, template: str | None = None,
                 **context: Any) -> None:
        super().__init__(message)
        self.api = api_error(status, message, param=param, code=code)
        self.template = template
        self.context = context


class DashboardHandler(ErrorRenderer, tornado.web.RequestHandler):
    """Base of every dashboard page. ``access``: "public", "user" or "admin".

    Errors go through :class:`gateway.errors.ErrorRenderer`; browsers get an HTML page
    (:meth:`render_error`), other clients the API's JSON body."""

    access = "user"
    error_log = log
    quiet_errors = (PageError, tornado.web.HTTPError)

    def initialize(self, gateway, dashboard: Dashboard) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.dash = dashboard
        if dashboard.sessions is None:
            dashboard.sessions = SessionAuthenticator(gateway.store, gateway.config)
        self.session: dict | None = None
        self.account: dict | None = None
        self.flash: str | None = None

    # --- headers, templates -----------------------------------------------------------
    def set_default_headers(self) -> None:
        security_headers(self)
        self.set_header("Cache-Control", "no-store")

    def get_template_path(self) -> str:
        return TEMPLATES

    def get_template_namespace(self) -> dict[str, Any]:
        ns = super().get_template_namespace()
        ns.update(csrf=self.session["csrf"] if self.session else "", account=self.account,
                  is_admin=self.is_admin, site=self.dash.cfg.site_name, flash=self.flash,
                  error=None, message=None, now=datetime.now(UTC))
        return ns

    @property
    def is_admin(self) -> bool:
        return bool(self.account and "admin" in self.account.get("roles", ()))

    @property
    def secure(self) -> bool:
        return is_secure(self.request, self.gateway.config.server.trusted_proxies)

    def client_ip(self) -> str:
        return client_ip(self.request, self.gateway.config.server.trusted_proxies)

    def wants_html(self) -> bool:
        return "text/html" in self.request.headers.get("Accept", "")

    # --- session, access, CSRF ---------------------------------------------------------
    def check_xsrf_cookie(self) -> None:
        """Tornado's cookie-based XSRF is not used: the token lives in the session."""

    async def prepare(self) -> None:
        method = self.request.method.lower()
        if getattr(type(self), method, None) is getattr(tornado.web.RequestHandler, method, None):
            raise PageError(405, f"{self.request.method} is not allowed here.",
                            code="method_not_allowed")
        if self.secure:
            self.set_header("Strict-Transport-Security", "max-age=31536000")
        self.session, account = await self.dash.sessions.load(self.request)
        if account is not None and account.get("status") == "active":
            self.account = account
        elif account is not None:  # suspended/closed since sign-in: the session ends
            await self.store.sessions.delete(self.session["_id"])
            self.session = None
        if self.access != "public" and self.account is None:
            if self.request.method in SAFE_METHODS and self.wants_html():
                self.redirect("/dashboard/login")
                return
            raise PageError(401, "Sign in first.", code="not_signed_in")
        if self.access == "admin" and not self.is_admin:
            raise PageError(403, "This page is for administrators only.",
                            code="admin_only")
        if self.request.method not in SAFE_METHODS:
            sent = self.get_body_argument("_csrf", "") or \
                self.request.headers.get("X-CSRF-Token", "")
            if not self.session or not sent or not hmac.compare_digest(
                    sent.encode(), self.session["csrf"].encode()):
                raise PageError(403, "The form has expired or did not come from this site; "
                                     "reload the page and try again.", code="csrf_failed")
        if self.session and self.request.method in SAFE_METHODS:
            self.flash = await self.store.sessions.pop_flash(self.session)

    async def ensure_session(self) -> dict:
        """An (anonymous) session for forms shown to visitors who are not signed in."""
        if self.session is None:
            await self.start_session(None)
        return self.session

    async def start_session(self, account_id: str | None) -> None:
        """A new session with a new id (never reuse a pre-login id: no fixation)."""
        if self.session is not None:
            await self.store.sessions.delete(self.session["_id"])
        token, self.session = await self.store.sessions.create(
            account_id, idle=self.dash.cfg.session_idle,
            absolute=self.dash.cfg.session_absolute)
        self.set_cookie(cookie_name(self.secure), token, path="/", httponly=True,
                        secure=self.secure, samesite="Lax")

    async def end_session(self) -> None:
        if self.session is not None:
            await self.store.sessions.delete(self.session["_id"])
        self.session = None
        self.account = None
        self.clear_cookie(cookie_name(self.secure), path="/", secure=self.secure,
                          httponly=True, samesite="Lax")

    async def set_flash(self, message: str) -> None:
        if self.session:
            await self.store.sessions.set_flash(self.session["_id"], message)

    async def reauthenticate(self, password: str) -> None:
        """The signed-in account's current password, checked again before a sensitive
        change (a stolen session cookie alone is not enough). Throttled with the
        sign-in counters. PageError: 401 without a password, 400 for a wrong one, 429."""
        if not password:
            raise PageError(401, "Enter your current password to confirm this change.",
                            param="current_password", code="reauthentication_required")
        throttle = self.dash.throttle(self.store)
        attempt = await throttle.reserve(self.account["email"], self.client_ip())
        if not attempt.allowed:
            raise PageError(429, "Too many wrong passwords. Try again later.",
                            code="too_many_attempts")
        try:
            ok, _ = await self.dash.passwords.verify(self.account.get("password_hash"),
                                                     password)
        except BaseException:
            await throttle.release(attempt)
            raise
        if not ok:                                   # the reservation stays counted
            raise PageError(400, "Your current password is not correct.",
                            param="current_password", code="invalid_password")
        await throttle.release(attempt)

    def arg(self, name: str, max_len: int = 1024) -> str:
        value = self.get_body_argument(name, "") or ""
        if len(value) > max_len:
            raise PageError(400, f"{name} is too long.", param=name, code="too_long")
        return value

    # --- errors ------------------------------------------------------------------------
    def error_for(self, status_code: int, exc: BaseException | None) -> APIError:
        if isinstance(exc, PageError):
            return exc.api
        if isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            return api_error(status_code, exc.log_message or tornado_compat.status_reason(self))
        return internal_error()

    def render_error(self, err: APIError, exc: BaseException | None = None) -> None:
        """Browsers get the page's template (a PageError's, else error.html) with the
        message; other clients the API's JSON body."""
        if not self.wants_html():
            return super().render_error(err, exc)
        page = exc if isinstance(exc, PageError) else None
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.render(page.template if page and page.template else "error.html",
                    error=err.message, status=err.status, **(page.context if page else {}))


class StaticHandler(tornado.web.StaticFileHandler):
    """The dashboard's CSS, with the same security headers."""

    def initialize(self, path: str, gateway=None, **kwargs) -> None:
        super().initialize(path, **kwargs)

    def set_default_headers(self) -> None:
        security_headers(self)


class NotFoundPage(DashboardHandler):
    """Unknown dashboard URLs."""

    access = "public"

    async def prepare(self) -> None:
        raise PageError(404, f"No such page: {self.request.path}", code="unknown_url")
