"""The playground page: a signed-in user picks a model and chats over the WebSocket
chat protocol (/v1/chat/ws), authenticated by the dashboard session cookie.

The page's script (static/playground.js) is the only script in the dashboard, so this
page alone relaxes the Content-Security-Policy: scripts and WebSocket connections from
the same origin only. Nothing typed here is stored: the conversation lives in the page.
"""
from __future__ import annotations

from dashboard.web import CSP, DashboardHandler
from gateway.types import Principal

PLAYGROUND_CSP = CSP + "; script-src 'self'; connect-src 'self'"


class PlaygroundHandler(DashboardHandler):
    """GET /dashboard/playground: model picker, conversation, Send and Stop."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", PLAYGROUND_CSP)

    async def get(self) -> None:
        principal = Principal(account_id=self.account["_id"],
                              tier=self.account.get("tier", ""), via="session")
        models = self.gateway.models_for(principal)
        self.render("playground.html", models=models)
