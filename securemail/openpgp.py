"""Seal documents for a team. Only seal() makes a SealedMessage; nothing else may.

(Skeleton: the SealedMessage type is fixed here so that outbox can depend on it.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NewType

Fingerprint = NewType("Fingerprint", str)

_SEAL_TOKEN = object()


@dataclass(frozen=True, slots=True)
class SealedMessage:
    """A PGP/MIME (RFC 3156) message ready for SMTP; constructible only by seal()."""

    mime: bytes  # the whole RFC 5322 message, outer envelope included
    message_id: str  # "<...@...>", stable per delivery
    sender: str  # envelope MAIL FROM
    recipient: str  # envelope RCPT TO: the team's one entry address
    reference: str  # UVZ-...
    recipient_fingerprints: tuple[Fingerprint, ...]
    signer_fingerprint: Fingerprint
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _SEAL_TOKEN:
            raise TypeError("SealedMessage can only be made by openpgp.seal()")
