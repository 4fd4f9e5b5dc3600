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

Bodies are stored encrypted (``MailSeal``: Fernet, with a key generated at first use in
``data_dir/mail.key``, mode 0600, or ``[smtp] key_file``), so a reset code waiting in
the outbox, or left in a database file, is unreadable without the key; once a message is
sent (or given up) its body is erased. A process sends only messages sealed with its own
key: gateways on several hosts sharing one database either share the key file or each
send what they queued.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib
from cryptography.fernet import Fernet, InvalidToken

from gateway.sdk import ConfigError, Service, build_options, stop_task

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
    key_file: str = ""              # key sealing queued bodies; default data_dir/mail.key

    @classmethod
    def from_config(cls, config) -> "SmtpConfig":
        """Validate ``config.extra["smtp"]`` with messages that name the key."""
        cfg = build_options(cls, dict(config.extra.get("smtp", {})), "smtp")
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


def private_dir(path: str) -> str:
    """Create ``path`` (0700), or take group/other permissions away from it."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        try:
            os.chmod(path, mode & 0o700)
        except OSError:  # not ours, or read-only: the key file itself is still 0600
            log.warning("cannot make %s private (mode %o)", path, mode)
    return path


def _read_key(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_mode & 0o077:
            os.fchmod(f.fileno(), 0o600)
        key = f.read().strip()
    Fernet(key)  # a clear error for a damaged file
    return key


def load_or_create_key(path: str) -> bytes:
    """The sealing key at ``path``; a new one (mode 0600) if the file does not exist.
    Safe when several processes start at once: the first link wins, all read it."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return _read_key(path)


class MailSeal:
    """Encrypts queued mail bodies at rest (Fernet: AES-CBC + HMAC-SHA256)."""

    _by_path: dict[tuple[str, str], "MailSeal"] = {}

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:16]

    @classmethod
    def for_config(cls, config) -> "MailSeal":
        """The seal of this gateway (one per key file and process)."""
        smtp = config.extra.get("smtp", {}) if hasattr(config, "extra") else {}
        where = (config.server.data_dir, smtp.get("key_file", ""))
        if where not in cls._by_path:
            path = where[1] or os.path.join(config.server.data_dir, "mail.key")
            try:
                private_dir(config.server.data_dir)
                key = load_or_create_key(os.path.abspath(path))
            except OSError as exc:   # a read-only or full data_dir: one line, no traceback
                raise ConfigError(f"the mail sealing key {path} cannot be read or created: "
                                  f"{exc.strerror or type(exc).__name__} (set [smtp] "
                                  "key_file, or make server.data_dir writable)") from None
            cls._by_path[where] = cls(key)
        return cls._by_path[where]

    def seal(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode()

    def open(self, token: str) -> str:
        return self._fernet.decrypt(token.encode()).decode()


async def enqueue(gateway, to: str, subject: str, body: str, *, kind: str = "",
                  account_id: str | None = None) -> None:
    """Store a message in the outbox (its body sealed) and wake this process's sender."""
    seal = MailSeal.for_config(gateway.config)
    await gateway.store.outbox.enqueue(to, subject, seal.seal(body), kind=kind,
                                       account_id=account_id, key_id=seal.key_id)
    for service in gateway.services:
        if isinstance(service, Mailer):
            service.wake()


class Mailer(Service):
    """Background sender over the outbox: claim, send, mark sent or back off."""

    name = "mailer"

    def __init__(self, cfg: SmtpConfig) -> None:
        self.cfg = cfg
        self.store = None
        self.seal: MailSeal | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._warned = False

    async def start(self, gateway) -> None:
        self.store = gateway.store
        self.seal = MailSeal.for_config(gateway.config)
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
        mail = await self.store.outbox.claim(self.cfg.timeout * 2 + 10,
                                             key_id=self.seal.key_id)
        if mail is None:
            return False
        try:
            body = self.seal.open(mail["body"]) if mail.get("key_id") else mail["body"]
        except InvalidToken:
            await self.store.outbox.retry_later(mail["_id"], 0, "InvalidToken: the body "
                                                "cannot be decrypted", give_up=True)
            log.error("mail %s (%s) cannot be decrypted; dropped", mail["_id"],
                      mail.get("kind"))
            return True
        try:
            await self._send(mail, body)
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

    async def _send(self, mail: dict, body: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.cfg.sender
        msg["To"] = mail["to"]
        msg["Subject"] = mail["subject"]
        msg["Message-ID"] = make_msgid(domain=self.cfg.sender.rpartition("@")[2].strip(">"))
        msg.set_content(body)
        await aiosmtplib.send(msg, hostname=self.cfg.host, port=self.cfg.port,
                              use_tls=self.cfg.tls, start_tls=self.cfg.starttls,
                              username=self.cfg.username or None,
                              password=self.cfg.password or None, timeout=self.cfg.timeout)
