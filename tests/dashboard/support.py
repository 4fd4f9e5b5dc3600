"""Helpers of the dashboard tests: a real SMTP server (aiosmtpd) and a form client."""
from __future__ import annotations

import email
import email.policy
import re
import threading
import time

import httpx

from aiosmtpd.controller import Controller

from tests.helpers import wait_until  # noqa: F401 - re-exported for the dashboard tests

CSRF = re.compile(r'name="_csrf" value="([^"]+)"')
HTML = {"Accept": "text/html"}


class Inbox:
    """A real SMTP server on loopback collecting every message it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[email.message.EmailMessage] = []
        self.lock = threading.Lock()
        self.controller: Controller | None = None

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(msg)
        return "250 OK"

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller:
            self.controller.stop()
            self.controller = None

    def to(self, address: str, subject_part: str = "") -> list:
        with self.lock:
            return [m for m in self.messages if m["To"] == address and
                    subject_part.lower() in m["Subject"].lower()]

    def wait_for(self, address: str, subject_part: str = "", timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.to(address, subject_part)
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no mail to {address} about {subject_part!r}; got "
                             f"{[(m['To'], m['Subject']) for m in self.messages]}")


class Browserless(httpx.Client):
    """An HTTP client that fills the dashboard's forms like a browser would."""

    def __init__(self, base_url: str, **kw) -> None:
        kw.setdefault("timeout", 30)
        kw.setdefault("verify", False)
        super().__init__(base_url=base_url, **kw)

    def csrf(self, path: str = "/dashboard/login") -> str:
        page = self.get(path, headers=HTML)
        match = CSRF.search(page.text)
        assert match, f"no CSRF token on {path}: {page.status_code} {page.text[:300]}"
        return match.group(1)

    def submit(self, path: str, data: dict, form_page: str | None = None,
               html: bool = False) -> httpx.Response:
        token = self.csrf(form_page or path)
        return self.post(path, data={"_csrf": token, **data}, headers=HTML if html else {})

    def login(self, email_addr: str, password: str) -> httpx.Response:
        return self.submit("/dashboard/login", {"email": email_addr, "password": password})

    def register(self, email_addr: str, password: str, tier: str = "free") -> httpx.Response:
        return self.submit("/dashboard/register",
                           {"email": email_addr, "password": password, "tier": tier})


def assert_api_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    assert "Traceback" not in resp.text
    return body["error"]


