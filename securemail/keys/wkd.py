"""Web Key Directory lookup (draft-koch-openpgp-webkey-service) as a helper for reviewers:
it proposes a key, it never pins one.

Invariants: nothing here writes to the database or to the gateway keyring; a fetched key is
read in a scratch keyring that is deleted afterwards; HTTPS only, with certificate and
host name verification (aiohttp's default; ``ssl_context`` may only add trust anchors);
the proposal holds only a public key that carries the looked-up address as a user id, and
data with secret key packets is refused. Trust comes from the region's review of
keys/directory.toml, never from the web server that answered.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp.abc import AbstractResolver

from securemail.errors import InputError, SecuremailError
from securemail.message import armor
from securemail.message.mime import ADDRESS_RE
from securemail.openpgp.keyinfo import Fingerprint, phone_code
from securemail.openpgp.keystore import KeyStore

ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"
MAX_KEY_BYTES = 256 * 1024  # a certificate with a few user ids and subkeys is a few KiB


class DiscoveryError(SecuremailError):
    code = "keys.discovery_failed"
    nl = "Er is via de Web Key Directory geen bruikbare sleutel gevonden."
    http_status = 404


@dataclass(frozen=True, slots=True)
class Proposal:
    """A key found for an address: to be reviewed and, if right, added to keys/ by a
    pull request with the phone check as evidence. Not pinned, not trusted."""

    address: str
    fingerprint: Fingerprint
    phone_code: str
    method: str  # "advanced" or "direct"
    url: str
    armored: str
    uids: tuple[str, ...]


def zbase32(data: bytes) -> str:
    """z-base-32 (RFC 6189 §5.1.6) of ``data``; WKD uses it on the SHA-1 of the local part."""
    bits = int.from_bytes(data, "big")
    n = len(data) * 8
    chars = -(-n // 5)
    bits <<= chars * 5 - n
    return "".join(ZBASE32[(bits >> (5 * (chars - 1 - i))) & 31] for i in range(chars))


def urls(address: str, *, port: int = 443) -> list[tuple[str, str]]:
    """[(method, url)] for ``address``: the advanced method first, then the direct one."""
    if not ADDRESS_RE.fullmatch(address):
        raise InputError("not an e-mail address", field="address")
    local, domain = address.rsplit("@", 1)
    domain = domain.lower()
    digest = zbase32(hashlib.sha1(local.lower().encode("utf-8")).digest())  # noqa: S324 - WKD
    suffix = f":{port}" if port != 443 else ""
    query = f"?l={quote(local, safe='')}"
    return [
        (
            "advanced",
            f"https://openpgpkey.{domain}{suffix}/.well-known/openpgpkey/{domain}/hu/"
            f"{digest}{query}",
        ),
        ("direct", f"https://{domain}{suffix}/.well-known/openpgpkey/hu/{digest}{query}"),
    ]


async def _fetch(
    session: aiohttp.ClientSession, url: str, ssl_context: ssl.SSLContext | bool
) -> bytes | None:
    """The key bytes, or None for 404; raises OSError-like errors for an unreachable host."""
    async with session.get(url, ssl=ssl_context, allow_redirects=False) as r:
        if r.status == 404:
            return None
        if r.status != 200:
            raise DiscoveryError(f"{url} answered {r.status}", url=url)
        data = await r.content.read(MAX_KEY_BYTES + 1)
        if len(data) > MAX_KEY_BYTES:
            raise DiscoveryError(f"{url} sent more than {MAX_KEY_BYTES} bytes", url=url)
        return data


async def _propose(address: str, method: str, url: str, data: bytes, gpg: str) -> Proposal:
    try:
        armor.require_public_keys(data)
    except ValueError as exc:
        raise DiscoveryError(f"{url} did not send a public key: {exc}", url=url) from None
    scratch_dir = Path(tempfile.mkdtemp(prefix="smw-"))  # short: gpg-agent's socket path
    try:
        scratch = KeyStore.create(scratch_dir / "g", binary=gpg)
        try:
            fprs = await scratch.import_keys(data)
            infos = [await scratch.key_info(f) for f in fprs]
            matching = [i for i in infos if address.lower() in i.uids]
            if len(matching) != 1:
                raise DiscoveryError(
                    f"{url} sent {len(infos)} key(s), {len(matching)} with the address",
                    url=url,
                )
            info = matching[0]
            armored = await scratch.export_public(info.fingerprint)
        finally:
            await scratch.close()
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    return Proposal(
        address, info.fingerprint, phone_code(info.fingerprint), method, url, armored, info.uids
    )


async def discover(
    address: str,
    *,
    port: int = 443,
    ssl_context: ssl.SSLContext | None = None,
    resolver: AbstractResolver | None = None,
    timeout: float = 10.0,
    gpg: str = "gpg",
) -> Proposal:
    """Look ``address`` up by WKD: the advanced method; the direct method only when the
    openpgpkey subdomain cannot be reached (as the draft says). ``port``, ``ssl_context``
    (extra trust anchors) and ``resolver`` exist for tests on 127.0.0.1."""
    context: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    connector_args: dict[str, Any] = {"resolver": resolver} if resolver else {}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(
        timeout=client_timeout, connector=aiohttp.TCPConnector(**connector_args)
    ) as session:
        for method, url in urls(address, port=port):
            try:
                data = await _fetch(session, url, context)
            except aiohttp.ClientConnectorCertificateError as exc:
                raise DiscoveryError(f"{url}: TLS certificate refused ({exc})", url=url) from None
            except (aiohttp.ClientConnectorError, socket.gaierror) as exc:
                if method == "advanced":
                    continue  # no openpgpkey subdomain: the direct method applies
                raise DiscoveryError(f"{url}: {exc}", url=url) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise DiscoveryError(f"{url}: {type(exc).__name__}", url=url) from None
            if data is None:
                raise DiscoveryError(f"no key for {address} at {url}", url=url)
            return await _propose(address, method, url, data, gpg)
    raise DiscoveryError(f"no key for {address}", address=address)
