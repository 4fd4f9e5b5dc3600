"""Client addresses behind trusted proxies: public core API for handlers and plugins.

``X-Forwarded-For`` (and ``X-Forwarded-Proto``) are believed only when the direct peer
is in ``[server] trusted_proxies``; everything else sees the peer's own address.
"""
from __future__ import annotations

import ipaddress


def in_networks(addr: str, networks: list[str]) -> bool:
    """``addr`` is an IP address inside one of ``networks`` (CIDRs or single addresses)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def client_ip(request, trusted_proxies: list[str]) -> str:
    """The client's address: X-Forwarded-For is believed only from a trusted proxy."""
    remote = request.remote_ip or ""
    if not trusted_proxies or not in_networks(remote, trusted_proxies):
        return remote
    forwarded = [p.strip() for p in request.headers.get("X-Forwarded-For", "").split(",")
                 if p.strip()]
    # Walk from the nearest hop back, skipping our own proxies.
    for addr in reversed(forwarded):
        if not in_networks(addr, trusted_proxies):
            return addr
    return forwarded[0] if forwarded else remote
