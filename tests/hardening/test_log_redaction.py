"""No secret in any log line (issue 9, item 3): canary keys, session tokens and
passwords sent where Tornado logs them (headers with control characters) never reach
the gateway's log; the lines are there, redacted."""
from __future__ import annotations

import io
import logging
import secrets

from gateway import logredact
from tests.hardening.rawhttp import exchange, json_error
from tests.helpers import wait_until


def test_a_canary_key_session_and_password_never_reach_the_log(hard_gw):
    key = hard_gw.create_key("canary@example.com")   # a real, working key
    session = secrets.token_urlsafe(32)
    password = "canary-pw-" + secrets.token_hex(8)
    requests = [
        f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\x7f\r\n\r\n",
        f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key[:12]}\x01"
        f"{key[12:]}\r\n\r\n",
        f"GET /dashboard HTTP/1.1\r\nHost: x\r\nCookie: ayct_session={session}\x01\r\n\r\n",
        f"GET /dashboard HTTP/1.1\r\nHost: x\r\nCookie: __Host-ayct_session={session}"
        f"\x7f; other=1\r\n\r\n",
        f"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\x01\r\n\r\n",
        f"POST /dashboard/login HTTP/1.1\r\nHost: x\r\nX-Form: email=a@b.c&password="
        f"{password}\x01\r\nContent-Length: 0\r\n\r\n",
    ]
    answers = [exchange(hard_gw, raw.encode("latin1")) for raw in requests]
    log = wait_until(lambda: (text := hard_gw.log()).count("Invalid header value") >= 6
                     and text, timeout=10, what="Tornado's log lines")
    for secret in (key, key[5:25], key[-20:], session, session[:20], password):
        assert secret not in log, f"{secret[:8]}… leaked into the log"
    assert log.count("[REDACTED]") >= 6
    for status, _, body in answers:   # and each client got a JSON error
        assert status == 400 and json_error(body)["code"] == "malformed_request"


def test_redaction_covers_messages_arguments_and_tracebacks():
    """Also records built with %-arguments and exceptions whose text holds a secret."""
    key = "ayct_" + secrets.token_urlsafe(32)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("tests.hardening.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    logredact.install()
    try:
        logger.warning("header %r", f"Authorization: Bearer {key}")
        try:
            raise ValueError(f"bad cookie ayct_session=abc{key}")
        except ValueError:
            logger.exception("failed with password=%s", "hunter2hunter2")
        logger.error('{"password": "s3cr3t pass", "token": "tok-123", "code": "RST-991"}')
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert key not in text and key[5:25] not in text
    for secret in ("hunter2hunter2", "s3cr3t", "tok-123", "RST-991"):
        assert secret not in text
    assert "ValueError" in text and text.count("[REDACTED]") >= 6
    # Names and ordinary words are left alone.
    assert logredact.redact("ayct_session cookie; ayct_requests_total; close code 1009") == \
        "ayct_session cookie; ayct_requests_total; close code 1009"
