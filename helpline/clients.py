"""Who is calling: the client's address behind trusted reverse proxies, whether the caller is local or
holds the admin token, and whether a browser page's origin may open the chat.

The address is what per-address limits count. A forwarding header (``X-Forwarded-For``) is believed
only from a peer in ``trusted_proxies``, read from the right, skipping our own proxies: the first
address that is not a trusted proxy is the client (the usual "right-most untrusted" rule; any
client can put anything in the left part). ``aiohttp-remotes`` was considered: its strict middleware
needs the exact number of proxy hops on every request (a health check sent straight to the process
fails) and its filtered one believes the header from any peer, so neither fits.

A caller is *local* when the connection comes from a loopback address with no forwarding header,
or through a trusted proxy from a loopback client. Local callers and holders of
``HELPLINE_ADMIN_TOKEN`` (``Authorization: Bearer TOKEN``) see operational details (``/healthz``) and
may mark their chat traffic as a replay (``helpline replay``).

Must not: read settings from the environment (the app passes them) or know about routing.
"""

from __future__ import annotations

import fnmatch
import hmac
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

from aiohttp import hdrs, web

Network = IPv4Network | IPv6Network
UNKNOWN = "unknown"
FORWARDING_HEADERS = (hdrs.X_FORWARDED_FOR, hdrs.FORWARDED, "X-Real-IP", "X-Forwarded-Host", "True-Client-IP")
"""Any of these on a request means a proxy relayed it: the peer is not the client."""


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """``["127.0.0.1", "10.0.0.0/8", "::1"]`` -> networks. Raises ``ValueError`` naming a bad entry."""
    out = []
    for value in values:
        try:
            out.append(ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None
    return tuple(out)


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def peer_address(request: web.BaseRequest) -> str:
    """The address of the TCP peer (the client, or the proxy in front of us)."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return UNKNOWN


def client_address(request: web.BaseRequest, proxies: Sequence[Network]) -> str:
    """The client's IP address as text: the TCP peer, or, when the peer is a trusted proxy, the
    right-most address of ``X-Forwarded-For`` that is not a trusted proxy. An unparsable header
    from a trusted proxy yields the proxy's own address (counted, never trusted further)."""
    peer = peer_address(request)
    if not proxies or not _trusted(peer, proxies):
        return peer
    return _forwarded_client(request, proxies) or peer


def _forwarded_client(request: web.BaseRequest, proxies: Sequence[Network]) -> str | None:
    """The client a trusted proxy names in ``X-Forwarded-For``, or None when it names none (no
    header, an empty one, or an unparsable hop)."""
    chain: list[str] = []
    for header in request.headers.getall(hdrs.X_FORWARDED_FOR, []):
        chain.extend(part.strip() for part in header.split(","))
    for hop in reversed(chain):
        try:
            ip_address(hop)
        except ValueError:
            return None
        if not _trusted(hop, proxies):
            return hop
    return chain[0] if chain else None


def _loopback(address: str) -> bool:
    try:
        return ip_address(address).is_loopback
    except ValueError:
        return False


def is_local(request: web.BaseRequest, proxies: Sequence[Network]) -> bool:
    """True for a caller on this machine: a loopback peer sending no forwarding header (any of
    :data:`FORWARDING_HEADERS`), or a loopback client named by a trusted proxy. A forwarding header
    from an untrusted peer makes the caller not local (a proxy we were not told about may be
    relaying the public), and so does a trusted proxy that does not name its client in a readable
    ``X-Forwarded-For`` (one that sends only ``X-Real-IP`` or ``Forwarded``, or junk): the caller
    is then unknown, not this machine."""
    peer = peer_address(request)
    forwarded = any(header in request.headers for header in FORWARDING_HEADERS)
    if not forwarded:
        return _loopback(peer)
    if not _trusted(peer, proxies):
        return False
    client = _forwarded_client(request, proxies)
    return client is not None and _loopback(client)


def is_https(request: web.BaseRequest, proxies: Sequence[Network]) -> bool:
    """True when the client's request came over https: directly, or per the first
    ``X-Forwarded-Proto`` value of a trusted proxy (anyone else's header is ignored)."""
    if request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https" and _trusted(peer_address(request), proxies)


def has_admin_token(request: web.BaseRequest, token: str | None) -> bool:
    """True when ``token`` is configured and the request carries ``Authorization: Bearer TOKEN``
    (compared in constant time)."""
    if not token:
        return False
    scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def own_origin(request: web.BaseRequest) -> str:
    """``scheme://host[:port]`` of this server as the browser addressed it (``Host`` header)."""
    return f"{request.scheme}://{request.host}".lower()


def origin_allowed(request: web.BaseRequest, allowed: Sequence[str]) -> bool:
    """Whether a browser page at the request's ``Origin`` may open the chat socket.

    No ``Origin`` header: allowed (not a browser; ``helpline chat``, ``helpline replay``, a server).
    Otherwise the origin must be the server's own (same host and port as the request's ``Host``;
    http or https, since TLS may end at the proxy) or match an entry of ``allowed``: an exact origin
    (``https://shop.example.com``) or a pattern with ``*`` for any run of host characters
    (``https://*.example.com``), compared in lower case; ``*`` alone allows every origin.
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    origin = origin.strip().lower()
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and parts.netloc == request.host.lower():
        return True
    for pattern in allowed:
        pattern = pattern.strip().lower().rstrip("/")
        if pattern == "*" or origin == pattern:
            return True
        if "*" in pattern and fnmatch.fnmatchcase(origin, pattern) and "/" not in origin.split("//", 1)[-1]:
            return True
    return False
