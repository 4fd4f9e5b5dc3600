"""Built-in auth plugin: the dashboard's session cookie.

The browser holds one cookie, a random token; the session lives in MongoDB
(``store.sessions``) with its CSRF token and idle/absolute expiry. The authenticator
returns a ``Principal(via="session")`` for active accounts only, so browser features
outside the dashboard (e.g. WebSocket chat) can use ``gateway.authenticate(request)``.

Rules: a request that carries an ``Authorization`` header is left to the API key
authenticator; a state-changing request (not GET/HEAD/OPTIONS) is accepted only with an
``X-CSRF-Token`` header equal to the session's token, so other sites cannot ride the
cookie.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from gateway.sdk import Authenticator, Principal, build_options, hookimpl, in_networks

COOKIE = "ayct_session"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass
class SessionSettings:
    """What this plugin reads of ``[dashboard]``: the idle timeout that sessions (created
    by the dashboard's sign-in) share. The section as a whole belongs to the dashboard
    plugin, which claims it and validates every key at start."""

    session_idle: float = 3600.0    # seconds without a request before a session ends

    @classmethod
    def from_config(cls, config) -> "SessionSettings":
        section = dict(config.extra.get("dashboard", {}))
        return build_options(cls, {k: v for k, v in section.items() if k == "session_idle"},
                             "dashboard")


def is_secure(request, trusted_proxies: list[str]) -> bool:
    """Served over TLS: directly, or by a trusted proxy that says X-Forwarded-Proto: https."""
    if request.protocol == "https":
        return True
    if trusted_proxies and in_networks(request.remote_ip or "", trusted_proxies):
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return proto == "https"
    return False


def cookie_name(secure: bool) -> str:
    """The session cookie's name: ``__Host-`` prefixed when served securely."""
    return f"__Host-{COOKIE}" if secure else COOKIE


def session_cookie_name(request, trusted_proxies: list[str]) -> str:
    """The session cookie's name for this request."""
    return cookie_name(is_secure(request, trusted_proxies))


def read_token(request, trusted_proxies: list[str]) -> str | None:
    morsel = request.cookies.get(session_cookie_name(request, trusted_proxies))
    return morsel.value if morsel is not None else None


class SessionAuthenticator(Authenticator):
    """Resolves the session cookie to its session and account."""

    name = "session"

    def __init__(self, store, config) -> None:
        self.store = store
        self.trusted = config.server.trusted_proxies
        self.cfg = SessionSettings.from_config(config)

    async def load(self, request) -> tuple[dict | None, dict | None]:
        """``(session, account)`` for the request's cookie; either may be None."""
        token = read_token(request, self.trusted)
        if not token:
            return None, None
        session = await self.store.sessions.get(token, idle=self.cfg.session_idle)
        if session is None or not session.get("account_id"):
            return session, None
        account = await self.store.accounts.get(session["account_id"])
        return session, account

    async def authenticate(self, request) -> Principal | None:
        if request.headers.get("Authorization"):
            return None
        session, account = await self.load(request)
        if account is None or account.get("status") != "active":
            return None
        if request.method not in SAFE_METHODS:
            sent = request.headers.get("X-CSRF-Token", "")
            if not sent or not hmac.compare_digest(sent, session["csrf"]):
                return None
        return Principal(account_id=account["_id"], tier=account.get("tier", ""),
                         status="active", session_id=session["_id"],
                         roles=tuple(account.get("roles", ())), via="session")


@hookimpl
def register_authenticators(register, config, store):
    """Register the dashboard session-cookie authenticator."""
    register(SessionAuthenticator(store, config))
