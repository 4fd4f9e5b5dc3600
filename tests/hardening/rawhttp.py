"""A raw HTTP/1.1 exchange on a plain socket: for what an HTTP library will not send
(control characters in headers, stalled bodies, huge headers)."""
from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit


def connect(gw, timeout: float = 10.0) -> socket.socket:
    url = urlsplit(gw.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one response; the body by Content-Length or to EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += part
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = int(headers.get("content-length", -1))
    while length < 0 or len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return status, headers, body[:length] if length >= 0 else body


def exchange(gw, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(gw) as sock:
        sock.sendall(raw)
        return read_response(sock)


def json_error(body: bytes) -> dict:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err
