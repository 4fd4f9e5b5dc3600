"""HTTPS with a self-signed certificate made by the test, and X-Forwarded-For/-Proto
believed only from configured proxy addresses (in-process gateways: tests.inprocess)."""
from __future__ import annotations

import ssl
import subprocess

import httpx
import pytest

from tests.dashboard.conftest import ADMIN, dashboard_sections
from tests.dashboard.support import HTML, Browserless, assert_api_error
from tests.dashboard.test_accounts import new_email
from tests.inprocess import start_inprocess


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    return cert, key


def test_https_with_secure_host_cookie(mongo, inbox, tmp_path, certificate):
    cert, key = certificate
    sections = dashboard_sections(inbox.port)
    sections["server"] = {"tls_cert": str(cert), "tls_key": str(key)}
    gw = start_inprocess(tmp_path, mongo.uri, sections)
    try:
        assert gw.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))
        client = Browserless(gw.url, verify=trust)
        page = client.get("/dashboard/login", headers=HTML)
        assert page.status_code == 200
        (cookie,) = page.headers.get_list("set-cookie")
        assert cookie.startswith("__Host-ayct_session=")
        flags = cookie.lower()
        assert "; secure" in flags and "httponly" in flags and "path=/" in flags
        assert "domain=" not in flags
        assert "max-age" in page.headers["strict-transport-security"]
        assert client.login(*ADMIN).status_code == 303
        assert client.get("/dashboard").status_code == 200
        with pytest.raises(httpx.ConnectError):              # the certificate is checked
            httpx.get(gw.url + "/healthz", verify=True)
        with pytest.raises(httpx.HTTPError):                 # no plain HTTP on that port
            httpx.get(gw.url.replace("https://", "http://") + "/healthz")
    finally:
        gw.stop()


def failed_logins_until_throttled(gw, forwarded_for: str) -> int:
    for n in range(1, 10):
        client = Browserless(gw.url, headers={"X-Forwarded-For": forwarded_for})
        resp = client.login(new_email(), "wrong password!")
        if resp.status_code == 429:
            return n
        assert_api_error(resp, 401)
    return 0


def test_forwarded_headers_trusted_only_from_configured_proxies(mongo, inbox, tmp_path):
    limits = {"login_max_failures_ip": 3, "login_max_failures": 100, "register_max_per_ip": 2}
    trusting = start_inprocess(tmp_path / "a", mongo.uri, {
        **dashboard_sections(inbox.port, **limits),
        "server": {"trusted_proxies": ["127.0.0.1/32"]}})
    untrusting = start_inprocess(tmp_path / "b", mongo.uri, {
        **dashboard_sections(inbox.port, **limits),
        "server": {"trusted_proxies": ["10.9.0.0/16"]}})
    try:
        # Behind a trusted proxy the client address comes from X-Forwarded-For:
        assert failed_logins_until_throttled(trusting, "203.0.113.7") == 4
        assert_api_error(Browserless(trusting.url, headers={"X-Forwarded-For": "198.51.100.2"})
                         .login(new_email(), "wrong password!"), 401)   # another client
        # Registrations are limited per client IP too (no email bombing from one client).
        for status in (200, 200, 429):
            resp = Browserless(trusting.url, headers={"X-Forwarded-For": "203.0.113.9"}
                               ).register(new_email(), "correct horse battery")
            assert resp.status_code == status
        assert_api_error(resp, 429, "too_many_registrations")
        assert Browserless(trusting.url, headers={"X-Forwarded-For": "203.0.113.10"}).register(
            new_email(), "correct horse battery").status_code == 200
        # From elsewhere the header is ignored: spoofed addresses share the real one.
        for n in range(3):
            Browserless(untrusting.url, headers={"X-Forwarded-For": f"192.0.2.{n}"}).login(
                new_email(), "wrong password!")
        assert_api_error(Browserless(untrusting.url, headers={"X-Forwarded-For": "192.0.2.99"})
                         .login(new_email(), "wrong password!"), 429)
        # X-Forwarded-Proto: https makes the cookie Secure only from a trusted proxy.
        proto = {"X-Forwarded-Proto": "https", "Accept": "text/html"}
        cookie = httpx.get(trusting.url + "/dashboard/login", headers=proto).headers["set-cookie"]
        assert cookie.startswith("__Host-ayct_session=") and "; Secure" in cookie
        cookie = httpx.get(untrusting.url + "/dashboard/login",
                           headers=proto).headers["set-cookie"]
        assert cookie.startswith("ayct_session=") and "Secure" not in cookie
    finally:
        trusting.stop()
        untrusting.stop()
