"""No secret in any log line (issue 9, item 3): canary keys, session tokens and
passwords sent where Tornado logs them (headers with control characters) never reach
the gateway's log; the lines are there, redacted."""
from __future__ import annotations

import io
import logging
import re
import secrets

from gateway.obs import logredact
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


def test_cookie_names_and_csrf_headers_do_not_let_tokens_through(hard_gw):
    """Issue 22, security 7: ``Cookie: ayct_session\\t=<token>\\x01`` was logged as
    ``'ayct_[REDACTED]=<live token>\\x01'`` (the key pattern took the cookie name) and
    ``X-CSRF-Token: <token>\\x01`` as it was. Tornado's line names no header, so the
    value of an invalid header is masked whole; headers that name a secret are masked
    by name too."""
    before = hard_gw.log().count("Invalid header value")
    session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    requests = [
        f"GET /dashboard HTTP/1.1\r\nHost: x\r\nCookie: ayct_session\t={session}\x01\r\n\r\n",
        f"GET /dashboard HTTP/1.1\r\nHost: x\r\nCookie: other=1; __Host-ayct_session \t= "
        f"{session}\x01\r\n\r\n",
        f"POST /dashboard/keys HTTP/1.1\r\nHost: x\r\nX-CSRF-Token: {csrf}\x01\r\n"
        f"Content-Length: 0\r\n\r\n",
    ]
    for raw in requests:
        status, _, body = exchange(hard_gw, raw.encode("latin1"))
        assert status == 400 and json_error(body)["code"] == "malformed_request"
    log = wait_until(lambda: (text := hard_gw.log()).count("Invalid header value") >=
                     before + 3 and text, timeout=10, what="Tornado's log lines")
    for secret in (session, session[:16], session[-16:], csrf, csrf[:12], csrf[-12:]):
        assert secret not in log, f"{secret[:6]}… leaked into the log"
    assert log.count("Invalid header value '[REDACTED]'") >= 3


def test_secret_headers_are_redacted_by_name():
    token, key = secrets.token_urlsafe(24), "ayct_" + secrets.token_urlsafe(32)
    cases = {
        f"Invalid header value 'ayct_session\\t={token}\\x01'":
            "Invalid header value '[REDACTED]'",
        f'Invalid header value "it\'s {token}"': 'Invalid header value "[REDACTED]"',
        f"headers {{'X-Csrf-Token': '{token}', 'Cookie': 'a=1; b={token}', 'Host': 'h'}}":
            "headers {'X-Csrf-Token': '[REDACTED]', 'Cookie': '[REDACTED]', 'Host': 'h'}",
        f"X-CSRF-Token: {token}\nnext": "X-CSRF-Token: [REDACTED]\nnext",
        f"proxy-authorization:\\t{token} x": "proxy-authorization:\\t[REDACTED]",
        f"cookie ayct_session\\t={token}; x=1": "cookie ayct_session\\t=[REDACTED]; x=1",
        f"X-Api-Key: {key}": "X-Api-Key: [REDACTED]",
        f"key {key[:12]}\\t{key[12:]}": "key ayct_[REDACTED]",
    }
    for line, redacted in cases.items():
        assert logredact.redact(line) == redacted, line
    for same in ("ayct_session cookie; ayct_requests_total; close code 1009",
                 "200 GET /dashboard/keys 1.0ms request_id=abc"):
        assert logredact.redact(same) == same


def test_paths_cannot_forge_fields_or_lines_in_text_logs(hard_gw):
    """Issue 22, security 7: a path carrying ";request_id=forged" or U+0085 (NEL, a line
    break for many log tools) reached the text log as it was."""
    paths = ["/v1/models;request_id=forged", "/v1/models/x;request_id=forged2",
             "/v1/models/a\xc2\x85b", "/v1/models/c\xe2\x80\xa8d", "/v1/models/e\x1b[2Jf"]
    for path in paths:
        raw = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: real-{len(path)}\r\n\r\n"
        status, _, _ = exchange(hard_gw, raw.encode("latin1"))
        assert status < 500
    log = wait_until(lambda: (text := hard_gw.log()).count("request_id=real-") >= 3 and text,
                     timeout=10, what="the access log lines")
    assert "request_id=forged" not in log and "%3Brequest_id%3Dforged" in log
    for bad in ("\x85", "\u2028", "\x1b", "\xc2"):
        assert bad not in log, repr(bad)
    lines = [line for line in log.splitlines() if "request_id=real-" in line]
    assert any("/v1/models/a%C2%85b" in line for line in lines), lines
    for line in lines:     # each line ends with its own, real request id
        assert re.search(r" request_id=real-\d+$", line), line
    assert "\n".join(lines).splitlines() == lines   # no hidden line breaks


def test_text_log_lines_show_control_characters_escaped():
    from gateway.obs.logformat import formatter
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter("text"))
    logger = logging.getLogger("tests.hardening.injection")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("value %s", "a\x85b\u2028c\u2029d\x1b[31me\rf\tg")
    finally:
        logger.removeHandler(handler)
    line = out.getvalue()
    assert line.endswith("value a\\x85b\\u2028c\\u2029d\\x1b[31me\\x0df\tg\n"), repr(line)
    assert len(line.splitlines()) == 1
