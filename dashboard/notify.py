"""Send a dashboard email through the outbox."""
from __future__ import annotations

from dashboard import emails
from plugins.mail import mailer


async def send(handler_or_gateway, dash, kind: str, account: dict, **values) -> None:
    """Queue the ``kind`` message to ``account`` (delivered by the mailer service)."""
    gateway = getattr(handler_or_gateway, "gateway", handler_or_gateway)
    subject, body = emails.render(kind, site=dash.cfg.site_name, url=dash.cfg.public_url,
                                  **values)
    await mailer.enqueue(gateway, account["email"], subject, body, kind=kind,
                         account_id=account.get("_id"))
