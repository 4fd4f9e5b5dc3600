"""``https://`` upstreams through the lean client (plugins/backends/upstream_http.py):
a real TLS server (aiohttp, in the test's event loop) on loopback, with a certificate
from a CA made in the test, and the client verifying it (the CA trusted through an
``ssl_context``, or ``openai_compatible``'s ``ca_file`` option). Also what must be
refused: an untrusted CA, a name the certificate does not hold, the system's CAs for a
private one."""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import ssl
from types import SimpleNamespace

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plugins.backends.openai_compatible import OpenAICompatibleBackend
from plugins.backends.upstream_http import Pool

# -- certificates ------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "Test CA"):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(ca, names: list[str]):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder().subject_name(_name(names[0]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def server_context(tmp_path, ca, names: list[str]) -> ssl.SSLContext:
    key, cert = make_leaf(ca, names)
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(pem(cert))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def client_context(ca) -> ssl.SSLContext:
    """Verification on (the default context's: certificate chain and host name),
    trusting only the test CA."""
    ctx = ssl.create_default_context(cadata=pem(ca[1]).decode())
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


@pytest.fixture(scope="module")
def ca():
    return make_ca()


# -- a real TLS upstream -------------------------------------------------------------------

EVENTS = 5


class Upstream:
    """An OpenAI-like upstream served by aiohttp: ``/v1/models`` (JSON) and
    ``/v1/chat/completions`` (an SSE stream, chunked, one event per write; the last
    events wait until the test says ``go``, so the test sees the stream arrive in
    parts)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.headers: list[dict[str, str]] = []
        self.go = asyncio.Event()
        self.port = 0

    async def models(self, request):
        self.requests.append((request.method, request.path, b""))
        self.headers.append(dict(request.headers))
        return web.json_response({"object": "list", "data": [{"id": "tls-model"}]})

    async def chat(self, request):
        body = await request.read()
        self.requests.append((request.method, request.path, body))
        self.headers.append(dict(request.headers))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(EVENTS):
            if i == 2:
                await self.go.wait()
            await resp.write(b"data: " + json.dumps({"i": i}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def tls_upstream(ctx: ssl.SSLContext | None, host: str = "127.0.0.1"):
    """The upstream on loopback, over TLS with ``ctx`` (plain HTTP when None)."""
    upstream = Upstream()
    app = web.Application()
    app.router.add_get("/v1/models", upstream.models)
    app.router.add_post("/v1/chat/completions", upstream.chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=ctx)
    await site.start()
    upstream.port = runner.addresses[0][1]
    try:
        yield upstream
    finally:
        await runner.cleanup()


# -- the tests -----------------------------------------------------------------------------

def test_https_json_and_streamed_sse_over_verified_tls_on_one_connection(tmp_path, ca):
    async def go():
        async with tls_upstream(server_context(tmp_path, ca, ["localhost"])) as up:
            pool = Pool(f"https://localhost:{up.port}/v1", ssl_context=client_context(ca))
            models = await pool.request("GET", "/models")
            assert models.status == 200 and models.content_type.startswith("application/json")
            listed = json.loads(await models.read_all())
            models.release()

            conn = await pool.request("POST", "/chat/completions", b'{"stream":true}')
            assert conn.status == 200 and conn.content_type == "text/event-stream"
            first = b""
            while b'"i": 1' not in first:          # the first events, before "go"
                first += await conn.read()
            assert b'"i": 2' not in first
            up.go.set()
            rest = b""
            while data := await conn.read():
                rest += data
            conn.release()
            again = await pool.request("GET", "/models")   # the same TLS connection
            await again.read_all()
            again.release()
            opened, in_use = pool.opened, pool.in_use
            await pool.close()
            return listed, first + rest, opened, in_use, up.requests
    listed, body, opened, in_use, requests = asyncio.run(go())
    assert listed["data"][0]["id"] == "tls-model"
    events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert events == [json.dumps({"i": i}) for i in range(EVENTS)] + ["[DONE]"]
    assert [(m, p) for m, p, _ in requests] == [("GET", "/v1/models"),
                                                ("POST", "/v1/chat/completions"),
                                                ("GET", "/v1/models")]
    assert requests[1][2] == b'{"stream":true}'
    assert opened == 1 and in_use == 0


@pytest.mark.parametrize("case", ["untrusted_ca", "wrong_name", "system_cas"])
def test_a_certificate_that_does_not_verify_is_refused(tmp_path, ca, case):
    """Each is an error raised by ``request`` (not a response), the slot comes back,
    and the upstream never sees a request."""
    other_ca = make_ca("Another CA")
    server_ca, names, url_host, trust = {
        "untrusted_ca": (other_ca, ["localhost"], "localhost", client_context(ca)),
        # the certificate names localhost only; the URL says 127.0.0.1
        "wrong_name": (ca, ["localhost"], "127.0.0.1", client_context(ca)),
        "system_cas": (ca, ["localhost"], "localhost", None),
    }[case]

    async def go():
        async with tls_upstream(server_context(tmp_path, server_ca, names)) as up:
            pool = Pool(f"https://{url_host}:{up.port}/v1", ssl_context=trust)
            with pytest.raises(ssl.SSLCertVerificationError) as err:
                await pool.request("GET", "/models")
            in_use, opened = pool.in_use, pool.opened
            await pool.close()
            return err.value, in_use, opened, up.requests
    error, in_use, opened, requests = asyncio.run(go())
    assert isinstance(error, OSError)      # what the backend treats as a failed replica
    expected = "IP address mismatch" if case == "wrong_name" else "unable to get local issuer"
    assert expected in str(error)
    assert in_use == 0 and opened == 0 and requests == []


def test_an_ip_address_in_the_certificate_verifies(tmp_path, ca):
    async def go():
        async with tls_upstream(server_context(tmp_path, ca, ["127.0.0.1"])) as up:
            pool = Pool(f"https://127.0.0.1:{up.port}/v1", ssl_context=client_context(ca))
            conn = await pool.request("GET", "/models")
            body = await conn.read_all()
            conn.release()
            await pool.close()
            return json.loads(body)
    assert asyncio.run(go())["data"][0]["id"] == "tls-model"


def test_openai_compatible_ca_file_option(tmp_path, ca):
    """The backend's ``ca_file`` makes its pools (traffic and health probes) trust that
    CA; without it the system's CAs refuse the private one, and the replica is down."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pem(ca[1]))

    async def go():
        async with tls_upstream(server_context(tmp_path, ca, ["localhost"])) as up:
            up.go.set()
            url = f"https://localhost:{up.port}/v1"
            results = {}
            for label, options in [("with", {"ca_file": str(ca_file)}), ("without", {})]:
                backend = OpenAICompatibleBackend(
                    SimpleNamespace(name="tls-model",
                                    options={"base_url": url, "health_interval": 60,
                                             **options}), None)
                await backend.start()
                try:
                    health = await backend.health()
                    streamed = b""
                    if health["ok"]:
                        conn = await backend.replicas[0].pool.request(
                            "POST", "/chat/completions", b"{}")
                        streamed = await conn.read_all()
                        conn.release()
                    results[label] = (health["replicas_up"], streamed)
                finally:
                    await backend.close()
            return results
    results = asyncio.run(go())
    assert results["with"][0] == 1 and results["with"][1].endswith(b"data: [DONE]\n\n")
    assert results["without"] == (0, b"")
