"""Email through one SMTP relay (aiosmtplib), via the outbox.

Callers ``enqueue`` a message (stored in MongoDB at once); the ``Mailer`` service sends
due messages in the background and retries failures with exponential backoff, so an
SMTP outage delays mail but loses none. Configured by the ``[smtp]`` section::

    [smtp]
    host = "mail.smtp2go.com"
    port = 587
    starttls = true        # or tls = true for implicit TLS (port 465)
    username = "..."
    password = "..."       # or ALLYOUCANTOKEN_SMTP__PASSWORD
    sender = "AllYouCanToken <no-reply@example.com>"

Without ``host`` mail stays queued in the outbox (a warning is logged once).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib

from gateway.background import stop_task
from gateway.config import ConfigError, _build

log = logging.getLogger("allyoucantoken.mail")


@dataclass
class SmtpConfig:
    """``[smtp]``: the one SMTP relay all mail goes through."""

    host: str = ""
    port: int = 587
    starttls: bool = True
    tls: bool = False
    username: str = ""
    password: str = ""
    sender: str = "AllYouCanToken <no-reply@localhost>"
    timeout: float = 30.0
    poll_interval: float = 5.0      # seconds between looks at the outbox
    retry_base: float = 30.0        # first retry delay; doubles per attempt
    retry_max: float = 3600.0       # longest delay between attempts
    max_attempts: int = 100         # then the message is marked failed

    @classmethod
    def from_config(cls, config) -> "SmtpConfig":
        """Validate ``config.extra["smtp"]`` with messages that name the key."""
        cfg = _build(cls, dict(config.extra.get("smtp", {})), "smtp")
        if cfg.tls and cfg.starttls:
            # Implicit TLS wins when both are set explicitly only if the user meant it.
            if "starttls" in config.extra.get("smtp", {}):
                raise ConfigError("smtp: set either tls (implicit TLS, port 465) or "
                                  "starttls (port 587), not both")
            cfg.starttls = False
        if not 0 < cfg.port < 65536:
            raise ConfigError(f"smtp.port: {cfg.port} is not a TCP port")
        if "@" not in cfg.sender:
            raise ConfigError(f"smtp.sender: {cfg.sender!r} is not an email address")
        if bool(cfg.username) != bool(cfg.password):
            raise ConfigError("smtp: username and password must be set together")
        if cfg.poll_interval <= 0 or cfg.retry_base <= 0 or cfg.retry_max < cfg.retry_base:
            raise ConfigError("smtp: poll_interval and retry_base must be > 0 and "
                              "retry_max >= retry_base")
        return cfg


async def enqueue(gateway, to: str, subject: str, body: str, *, kind: str = "",
                  account_id: str | None = None) -> None:
    """Store a message in the outbox and wake this process's sender."""
    await gateway.store.outbox.enqueue(to, subject, body, kind=kind, account_id=account_id)
    for service in gateway.services:
        if isinstance(service, Mailer):
            service.wake()


class Mailer:
    """Background sender over the outbox: claim, send, mark sent or back off."""

    name = "mailer"

    def __init__(self, cfg: SmtpConfig) -> None:
        self.cfg = cfg
        self.store = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._warned = False

    async def start(self, gateway) -> None:
        self.store = gateway.store
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                while await self.send_one():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. database briefly away
                log.warning("outbox pass failed: %s", type(exc).__name__)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.poll_interval)
            except TimeoutError:
                pass

    async def send_one(self) -> bool:
        """Send one due message; False when there is nothing to do (or no relay)."""
        if not self.cfg.host:
            if not self._warned:
                log.warning("smtp.host is not set: email stays queued in the outbox")
                self._warned = True
            return False
        mail = await self.store.outbox.claim(self.cfg.timeout * 2 + 10)
        if mail is None:
            return False
        try:
            await self._send(mail)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            attempts = mail["attempts"]
            delay = min(self.cfg.retry_base * 2 ** (attempts - 1), self.cfg.retry_max)
            give_up = attempts >= self.cfg.max_attempts
            await self.store.outbox.retry_later(mail["_id"], delay,
                                                f"{type(exc).__name__}: {exc}", give_up)
            log.warning("mail %s (%s) not sent, attempt %d: %s; %s", mail["_id"],
                        mail.get("kind"), attempts, type(exc).__name__,
                        "giving up" if give_up else f"retry in {delay:g}s")
            return False
        await self.store.outbox.mark_sent(mail["_id"])
        log.info("mail %s (%s) sent", mail["_id"], mail.get("kind"))
        return True

    async def _send(self, mail: dict) -> None:
        msg = EmailMessage()
        msg["From"] = self.cfg.sender
        msg["To"] = mail["to"]
        msg["Subject"] = mail["subject"]
        msg["Message-ID"] = make_msgid(domain=self.cfg.sender.rpartition("@")[2].strip(">"))
        msg.set_content(mail["body"])
        await aiosmtplib.send(msg, hostname=self.cfg.host, port=self.cfg.port,
                              use_tls=self.cfg.tls, start_tls=self.cfg.starttls,
                              username=self.cfg.username or None,
                              password=self.cfg.password or None, timeout=self.cfg.timeout)
