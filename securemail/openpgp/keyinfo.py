"""What an OpenPGP key is and may be used for, read from gpg's colon listing.

Invariant: a key is used for encryption only when ``unusable_reason()`` returns None for
it at that moment, and then only through the subkey ``encryption_subkey()`` names; a key
signs only when ``unusable_signer_reason()`` returns None. Both decide from the key's own
timestamps and flags against an explicit ``now``, never from gpg's idea of the time, so
a cached KeyInfo stays correct as the clock moves.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any, NewType

Fingerprint = NewType("Fingerprint", str)

_FPR_RE = re.compile(r"[0-9A-F]{40}")

# RFC 4880 §9.1 public-key algorithm ids.
_ALGORITHMS = {
    1: "rsa",
    2: "rsa",
    3: "rsa",
    16: "elgamal",
    17: "dsa",
    18: "ecdh",
    19: "ecdsa",
    22: "eddsa",
}
MIN_RSA_BITS = 3072  # BSI TR-02102-1 asks >= 3000 bits since 2023; 3072 is the usual size
STRONG_CURVES = frozenset(
    {
        "ed25519",
        "cv25519",
        "ed448",
        "cv448",
        "nistp256",
        "nistp384",
        "nistp521",
        "brainpoolP256r1",
        "brainpoolP384r1",
        "brainpoolP512r1",
    }
)

WHY = (
    "missing",
    "expired",
    "revoked",
    "invalid",
    "no_encryption_subkey",
    "too_weak",
    "address_mismatch",
    "no_signing_key",
    # Decided by the directory, before gpg is asked (keydir.check_member_key):
    "not_pinned",  # the key is not an active pinned member key of the team
    "quarantined",  # a changed key waiting for its phone confirmation (keydir.confirm)
)


def parse_fingerprint(value: str) -> Fingerprint:
    """A full v4 fingerprint, upper-case without spaces; ValueError for anything else.

    Key ids, e-mail addresses and gpg search patterns are refused: recipients are pinned.
    """
    candidate = value.replace(" ", "").upper()
    if not _FPR_RE.fullmatch(candidate):
        raise ValueError("not a 40-hex-digit OpenPGP fingerprint")
    return Fingerprint(candidate)


def phone_code(fpr: str) -> str:
    """The code read out over the phone to confirm a changed key: ``ABCD-EF01-2345-6789``.

    It is the first two and the last two groups of the fingerprint as ``gpg --fingerprint``
    prints it, so the other side needs no tool to read it. 64 bits, not the 32 of a short
    key id: a key whose last 32 bits match a chosen one can be made on a GPU (evil32), one
    that matches 64 chosen bits cannot.
    """
    f = parse_fingerprint(fpr)
    return "-".join((f[0:4], f[4:8], f[32:36], f[36:40]))


def phone_code_matches(fpr: str, spoken: str) -> bool:
    """True when ``spoken`` (any case, spaces or dashes) is the phone code of ``fpr``."""
    said = re.sub(r"[\s-]", "", spoken or "").upper()
    return hmac.compare_digest(said.encode(), phone_code(fpr).replace("-", "").encode())


def expires_for_encryption(info: KeyInfo, now: datetime) -> datetime | None:
    """Until when ``unusable_reason`` stays None for this key, if it is usable now (None: no
    end). The primary's expiry caps the latest-expiring live strong encryption subkey's."""
    ends = [s.expires for s in _live(info, "e", now) if s.is_strong]
    if not ends:
        return now
    sub_end = None if None in ends else max(e for e in ends if e is not None)
    candidates = [e for e in (info.primary.expires, sub_end) if e is not None]
    return min(candidates) if candidates else None


@dataclass(frozen=True, slots=True)
class SubkeyInfo:
    """One key of a certificate (the primary comes first in KeyInfo.subkeys)."""

    fingerprint: Fingerprint
    algorithm: str  # "rsa", "dsa", "elgamal" or the curve name ("ed25519", "cv25519", ...)
    bits: int
    created: datetime
    expires: datetime | None
    revoked: bool
    invalid: bool  # gpg validity "i" (no valid self-signature) or "d" (disabled)
    capabilities: str  # gpg's lower-case letters: e(ncrypt), s(ign), c(ertify), a(uth)

    @property
    def key_id(self) -> str:
        return self.fingerprint[-16:]

    def is_expired(self, now: datetime) -> bool:
        return self.expires is not None and self.expires <= now

    def is_live(self, now: datetime) -> bool:
        return not (self.revoked or self.invalid or self.is_expired(now))

    @property
    def is_strong(self) -> bool:
        if self.algorithm == "rsa":
            return self.bits >= MIN_RSA_BITS
        return self.algorithm in STRONG_CURVES


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A certificate as listed by gpg. can_* are as of the listing; decide with *_reason(now)."""

    fingerprint: Fingerprint
    uids: tuple[str, ...]  # lower-case e-mail addresses of the user ids that are not revoked
    algorithm: str
    bits: int
    created: datetime
    expires: datetime | None
    revoked: bool
    can_encrypt: bool
    can_sign: bool
    encryption_subkeys: tuple[Fingerprint, ...]  # live, strong, encryption-capable
    subkeys: tuple[SubkeyInfo, ...] = ()  # primary first

    @property
    def primary(self) -> SubkeyInfo:
        return self.subkeys[0]


def _time(field: str) -> datetime | None:
    return datetime.fromtimestamp(int(field), UTC) if field.strip() else None


def _unescape(field: str) -> str:
    """gpg escapes ':' and control bytes as \\xHH in colon listings; the bytes are UTF-8."""
    raw = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), field)
    return raw.encode("latin-1", "replace").decode("utf-8", "replace")


def _email(uid: str) -> str:
    address = parseaddr(uid)[1] if "<" in uid else uid.strip()
    return address.lower() if "@" in address else ""


def _algorithm(fields: list[str]) -> str:
    curve = fields[16] if len(fields) > 16 else ""
    return curve or _ALGORITHMS.get(int(fields[3] or 0), f"algo{fields[3]}")


def parse_listing(colons: str, *, now: datetime | None = None) -> list[KeyInfo]:
    """KeyInfos from ``gpg --list-keys --with-colons --fixed-list-mode --with-fingerprint``."""
    now = now or datetime.now(UTC)
    keys: list[KeyInfo] = []
    current: dict[str, list[Any]] | None = None  # key rows, their fingerprints, uid e-mails

    def finish() -> None:
        if current is not None and current["keys"]:
            keys.append(_build(current["keys"], current["fprs"], current["uids"], now))

    for line in colons.splitlines():
        fields = line.split(":")
        kind = fields[0]
        if kind in ("pub", "sec"):
            finish()
            current = {"keys": [fields], "fprs": [], "uids": []}
        elif current is None:
            continue
        elif kind in ("sub", "ssb"):
            current["keys"].append(fields)
        elif kind == "fpr" and len(current["fprs"]) < len(current["keys"]):
            current["fprs"].append(fields[9])
        elif kind == "uid" and fields[1] not in ("r", "i"):  # revoked or invalid
            email = _email(_unescape(fields[9]))
            if email and email not in current["uids"]:
                current["uids"].append(email)
    finish()
    return keys


def _build(rows: list[list[str]], fprs: list[str], uids: list[str], now: datetime) -> KeyInfo:
    if len(fprs) != len(rows):
        raise ValueError("gpg listing without a fingerprint for every key")
    subkeys = tuple(
        SubkeyInfo(
            fingerprint=Fingerprint(fpr),
            algorithm=_algorithm(fields),
            bits=int(fields[2] or 0),
            created=_time(fields[5]) or datetime.fromtimestamp(0, UTC),
            expires=_time(fields[6]),
            revoked=fields[1] == "r",
            invalid=fields[1] in ("i", "d"),
            capabilities="".join(c for c in fields[11] if c.islower()),
        )
        for fields, fpr in zip(rows, fprs, strict=True)
    )
    primary = subkeys[0]
    info = KeyInfo(
        fingerprint=primary.fingerprint,
        uids=tuple(uids),
        algorithm=primary.algorithm,
        bits=primary.bits,
        created=primary.created,
        expires=primary.expires,
        revoked=primary.revoked,
        can_encrypt=False,
        can_sign=False,
        encryption_subkeys=(),
        subkeys=subkeys,
    )
    can_encrypt = unusable_reason(info, None, now) is None
    return dataclasses.replace(
        info,
        can_encrypt=can_encrypt,
        can_sign=unusable_signer_reason(info, now) is None,
        encryption_subkeys=tuple(
            s.fingerprint for s in _live(info, "e", now) if s.is_strong and can_encrypt
        ),
    )


def _live(info: KeyInfo, capability: str, now: datetime) -> list[SubkeyInfo]:
    return [s for s in info.subkeys if capability in s.capabilities and s.is_live(now)]


def _primary_reason(info: KeyInfo, now: datetime) -> str | None:
    primary = info.primary
    if primary.revoked:
        return "revoked"
    if primary.invalid:
        return "invalid"
    if primary.is_expired(now):
        return "expired"
    if not primary.is_strong:
        return "too_weak"
    return None


def unusable_reason(info: KeyInfo | None, address: str | None, now: datetime) -> str | None:
    """Why a recipient key may not be encrypted to at ``now`` (one of WHY), or None."""
    if info is None:
        return "missing"
    why = _primary_reason(info, now)
    if why:
        return why
    capable = [s for s in info.subkeys if "e" in s.capabilities]
    if not capable:
        return "no_encryption_subkey"
    live = [s for s in capable if s.is_live(now)]
    if not live:
        if all(s.revoked for s in capable):
            return "revoked"
        if any(s.is_expired(now) for s in capable):
            return "expired"
        return "invalid"
    if not any(s.is_strong for s in live):
        return "too_weak"
    if address is not None and address.strip().lower() not in info.uids:
        return "address_mismatch"
    return None


def encryption_subkey(info: KeyInfo, now: datetime) -> SubkeyInfo:
    """The subkey to encrypt to: the newest live, strong encryption key (as gpg would pick)."""
    candidates = [s for s in _live(info, "e", now) if s.is_strong]
    if not candidates:
        raise ValueError("key has no usable encryption subkey")
    return max(candidates, key=lambda s: s.created)


def unusable_signer_reason(info: KeyInfo | None, now: datetime) -> str | None:
    """Why a key may not sign at ``now`` (one of WHY), or None."""
    if info is None:
        return "missing"
    why = _primary_reason(info, now)
    if why:
        return why
    live = [s for s in _live(info, "s", now) if s.is_strong]
    return None if live else "no_signing_key"


def signing_fingerprints(info: KeyInfo) -> frozenset[str]:
    """Fingerprints that may appear as the maker of a signature by this certificate."""
    return frozenset(s.fingerprint for s in info.subkeys if "s" in s.capabilities)
