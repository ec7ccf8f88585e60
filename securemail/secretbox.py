"""Sealing small secrets at rest (TOTP seeds) under a key file that lives beside the database,
and keyed hashes (``SecretBox.keyed_hash``) of values that must not be guessable from a copy.

Invariant: a copy of ``securemail.db`` alone (a backup, a file attached to a support
ticket) does not reveal any TOTP secret: each is AES-256-GCM sealed under
``H/secrets.key`` (mode 0600, created on first use) with its purpose and owner as
associated data, so a sealed value moved to another row or user does not open.
Losing ``secrets.key`` means every person enrols their authenticator again (an
admin resets them); it is never regenerated over sealed values silently, because
a value that does not open raises instead of passing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
from pathlib import Path

import sqlite_utils
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securemail.errors import SecuremailError

KEY_FILE = "secrets.key"
VERSION = "v1"

_cache: dict[Path, SecretBox] = {}
_lock = threading.Lock()


class SecretBoxError(SecuremailError):
    code = "secrets.unreadable"
    nl = (
        "Een opgeslagen geheim kan niet worden gelezen. De beheerder moet uw tweede factor "
        "opnieuw laten koppelen."
    )
    http_status = 500


class SecretBox:
    """AES-256-GCM with a 96-bit random nonce per value; the value records the key version.

    One design for every sealed column: TOTP seeds here, patient content in
    ``securemail.contentbox`` (its own key and error type, passed in as ``error``).
    """

    def __init__(
        self, key: bytes, *, error: type[SecuremailError] = SecretBoxError, name: str = KEY_FILE
    ) -> None:
        if len(key) != 32:
            raise error(f"{name} must hold 32 bytes")
        self._aead = AESGCM(key)
        # A separate key for keyed hashes, derived (never the encryption key itself).
        self._mac_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"securemail.keyed-hash.v1"
        ).derive(key)
        self._error = error
        self._name = name

    @classmethod
    def load(cls, home: Path) -> SecretBox:
        """The box for a gateway home, creating ``secrets.key`` (0600) the first time."""
        path = (home / KEY_FILE).resolve()
        with _lock:
            box = _cache.get(path)
            if box is None:
                box = cls(read_or_create_key(path))
                _cache[path] = box
            return box

    @classmethod
    def for_db(cls, db: sqlite_utils.Database) -> SecretBox:
        """The box of the home that holds this database file (the key sits beside it)."""
        for _, name, file in db.execute("PRAGMA database_list").fetchall():
            if name == "main" and file:
                return cls.load(Path(file).parent)
        raise SecretBoxError("secrets need a database file in a gateway home")

    def seal(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return f"{VERSION}:{base64.b64encode(nonce + ct).decode('ascii')}"

    def open(self, sealed: str, *, context: str) -> str:
        version, _, payload = sealed.partition(":")
        if version != VERSION:
            raise self._error(f"sealed value has unknown version {version!r}", context=context)
        try:
            raw = base64.b64decode(payload, validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], context.encode("utf-8")).decode("utf-8")
        except (InvalidTag, ValueError):  # binascii.Error is a ValueError
            raise self._error(
                f"sealed value does not open with {self._name} (key replaced, or value moved"
                " or altered)",
                context=context,
            ) from None

    def keyed_hash(self, data: bytes, *, purpose: str) -> str:
        """HMAC-SHA256 of data under this home's key, hex: a value that identifies data
        (a BSN in a review sign-off) but cannot be reversed by trying every candidate
        without the key file, as a plain SHA-256 of a 9-digit number can in seconds."""
        msg = purpose.encode("utf-8") + b"\x00" + data
        return hmac.new(self._mac_key, msg, hashlib.sha256).hexdigest()

    @staticmethod
    def is_sealed(value: object) -> bool:
        """Whether a stored value has the sealed form (``v1:`` and base64), not plaintext."""
        return isinstance(value, str) and value.startswith(f"{VERSION}:")


def read_or_create_key(path: Path) -> bytes:
    """The 32-byte key at path, created (0600, O_EXCL, fsync) when absent."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = AESGCM.generate_key(bit_length=256)
    try:
        # O_EXCL: if another process made the key first, use theirs, never overwrite it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key
