"""Behind a reverse proxy: who the client is and whether it spoke HTTPS.

Invariant: X-Forwarded-For and X-Forwarded-Proto count only when the TCP peer is one of
``[web] trusted_proxies``; from any other peer they are ignored, so a client cannot
write a false "from where" into the audit trail (NEN 7513) or dodge the per-address
login throttle. The client is the rightmost hop in X-Forwarded-For that is not itself a
trusted proxy (every hop left of it was written by someone we do not trust). With the
default, an empty list, no forwarded header is ever honoured.

Plain functions here (config parses and validates the setting, ``config.parse_trusted``);
the first web middleware (``securemail.web.middleware.forwarded_mw``) rewrites
``request.remote`` and ``request.scheme`` with them, so everything downstream,
``middleware.access_point`` and the Secure-cookie decision included, reads one answer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from securemail.config import Network

#: A header longer than this is not a proxy chain we would believe; the peer stands.
MAX_HEADER = 2048
SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request came from: the client's address and the scheme it used."""

    address: str
    scheme: str


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [2001:db8::1]:443 (RFC 7239 style)
        text = text[1 : text.index("]")]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: tuple[Network, ...]
) -> bool:
    return any(addr.version == net.version and addr in net for net in trusted)


def resolve(
    peer: str | None,
    scheme: str,
    forwarded_for: str | None,
    forwarded_proto: str | None,
    trusted: tuple[Network, ...],
) -> Origin:
    """The client's address and scheme, believing forwarded headers only from trusted peers.

    ``peer`` is the TCP peer's address, ``scheme`` the transport's (http or https)."""
    peer_addr = _address(peer or "")
    if peer_addr is None or not trusted or not _trusted(peer_addr, trusted):
        return Origin(peer or "unknown", scheme)
    client = peer_addr
    if forwarded_for and len(forwarded_for) <= MAX_HEADER:
        for hop in reversed(forwarded_for.split(",")):
            addr = _address(hop)
            if addr is None:
                # Not an address: the chain is garbled from here on; the last hop we could
                # read (a trusted proxy) is the most we know.
                break
            client = addr
            if not _trusted(addr, trusted):
                break
    proto = scheme
    if forwarded_proto and len(forwarded_proto) <= MAX_HEADER:
        # The nearest proxy's word counts: the rightmost value.
        candidate = forwarded_proto.split(",")[-1].strip().lower()
        if candidate in SCHEMES:
            proto = candidate
    return Origin(str(client), proto)
