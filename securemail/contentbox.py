"""Patient content at rest: sealed under a content key held apart from the database file.

Invariants:

- every patient-content column (``SEALED_COLUMNS``) holds either ``''`` (empty, or
  purged) or a value AES-256-GCM sealed by ``seal`` (the ``secretbox`` design: random
  96-bit nonce, ``v1:`` version prefix); its associated data names the table, the column
  and the row's stable key (a reference, or a row id), so a sealed value copied to
  another row or column does not open;
- values leave the database only through ``open_value``, which raises
  ``ContentUnreadableError`` (never returns garbage or plaintext) when a value was
  altered, moved or sealed under another key;
- the key lives at ``Settings.content_key_path`` ([retention] content_key_file, default
  H/keys/content.key, mode 0600). It is created only while no sealed value exists; with
  sealed content and no key file, opening the home fails with ``ContentKeyMissingError``
  (a new key would make every stored request unreadable while looking healthy).

A copy of ``securemail.db`` alone therefore shows references, states, times, teams and
BSNs (the patient reference the audit trail and consent register keep as well), but no
name, birth date, indication text or evidence file name. docs/retention.md explains the
key's handling.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlite_utils

from securemail.config import Settings
from securemail.errors import ConflictError, SecuremailError
from securemail.secretbox import SecretBox, read_or_create_key

#: (table, column) -> the column naming the row in associated data; each holds patient
#: content. requests.answer carries the nurse in charge and the team's free text;
#: request_hops.reason the team's free-text reason for declining or passing on;
#: replies.body a nurse's reply taken by the inbound listener.
#: consents.evidence_ref the name of the consent's evidence file.
SEALED_COLUMNS: dict[tuple[str, str], str] = {
    ("requests", "document"): "reference",
    ("requests", "answer"): "reference",
    ("requests", "signed_order"): "reference",  # the GP's multipart/signed order
    ("asks", "patient_name"): "reference",
    ("asks", "patient_birth_date"): "reference",
    ("asks", "reason"): "reference",
    ("asks", "gp_answer"): "reference",
    ("request_hops", "reason"): "id",
    ("request_attachments", "data"): "id",
    ("replies", "body"): "reply_id",
    # A message in a request's or ask's conversation (securemail.exchange.thread).
    ("thread_messages", "body"): "id",
    # The consent's evidence name (often "Jansen 12-03-1948 toestemming.pdf"): keyed by
    # the consent, not the row, so a new version carries its evidence over unchanged.
    ("consents", "evidence_ref"): "consent_id",
    # A practice's unsent form (securemail.exchange.drafts), keyed by its random draft id.
    ("drafts", "form_values"): "draft_id",
    # The team's reason for ending an accepted order ("overleden" is health data) and its
    # free text (securemail.exchange.order_end).
    ("order_ends", "content"): "reference",
}

_registry: dict[Path, SecretBox] = {}
_lock = threading.Lock()
#: The file each open Database holds (it never changes): a work list opens hundreds of values
#: in one request, and asking sqlite and the file system each time cost more than the opening.
_files: weakref.WeakKeyDictionary[sqlite_utils.Database, Path] = weakref.WeakKeyDictionary()


class ContentKeyMissingError(SecuremailError):
    code = "retention.content_key_missing"
    nl = (
        "De sleutel waarmee de inhoud van berichten is versleuteld ontbreekt. De gateway "
        "start niet; de beheerder moet de sleutel terugzetten uit de back-up."
    )
    http_status = 503


class ContentUnreadableError(SecuremailError):
    code = "retention.content_unreadable"
    nl = (
        "De opgeslagen inhoud kan niet worden gelezen: hij is gewijzigd of hoort bij een andere "
        "sleutel. Meld dit aan de beheerder."
    )
    http_status = 500


class ContentPurgedError(ConflictError):
    """The content was removed after its retention period; only metadata is left."""

    code = "retention.content_purged"
    nl = (
        "De inhoud van dit verzoek is na afloop van de bewaartermijn verwijderd. Alleen het "
        "kenmerk, de status, de tijden en het team zijn nog bekend."
    )
    http_status = 410


def require_content(row: Mapping[str, Any]) -> None:
    """Raise ContentPurgedError for a row whose content was purged (answer, pass on, ...)."""
    if row.get("content_purged_at"):
        raise ContentPurgedError(
            "the content was purged after its retention period", reference=row.get("reference")
        )


def context(table: str, column: str, key: object) -> str:
    """The associated data binding a sealed value to its place (table, column, row)."""
    if (table, column) not in SEALED_COLUMNS:
        raise ValueError(f"{table}.{column} is not a sealed content column")
    return f"securemail.content/{table}.{column}/{key}"


def _db_file(db: sqlite_utils.Database | sqlite3.Connection) -> Path:
    if isinstance(db, sqlite_utils.Database):
        known = _files.get(db)
        if known is None:
            known = _files[db] = _main_file(db.conn)
        return known
    return _main_file(db)


def _main_file(conn: sqlite3.Connection) -> Path:
    for _, name, file in conn.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return Path(file).resolve()
    raise ContentKeyMissingError("patient content needs a database file in a gateway home")


def has_sealed_content(conn: sqlite3.Connection) -> bool:
    """Whether any sealed content value exists (then the key must never be made anew)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table, column in SEALED_COLUMNS:
        if table not in tables:
            continue
        sql = f"SELECT 1 FROM {table} WHERE {column} LIKE 'v1:%' LIMIT 1"  # noqa: S608 (fixed)
        if conn.execute(sql).fetchone():
            return True
    return False


def _first_sealed(conn: sqlite3.Connection) -> tuple[str, str, object, str] | None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for (table, column), key in SEALED_COLUMNS.items():
        if table not in tables:
            continue
        row = conn.execute(
            f"SELECT {key}, {column} FROM {table} WHERE {column} LIKE 'v1:%' "  # noqa: S608
            f"ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        if row:
            return table, column, row[0], str(row[1])
    return None


def load(settings: Settings) -> SecretBox:
    """The content box of this home, registered for its database file; checked on load.

    Creates the key (0600, in a 0700 folder) only when no sealed value exists yet; raises
    ContentKeyMissingError when sealed values exist without a key file, and
    ContentUnreadableError when the key file does not open the newest sealed value.
    """
    path = settings.content_key_path
    db_path = settings.db_path.resolve()
    with _lock:
        conn = sqlite3.connect(str(db_path)) if db_path.exists() else None
        try:
            if not path.exists():
                if conn is not None and has_sealed_content(conn):
                    raise ContentKeyMissingError(
                        f"content key {path} is missing but the database holds sealed content; "
                        "restore the key file from its backup (a new key would not open it)",
                        key_file=str(path),
                    )
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                key = read_or_create_key(path)
            except OSError as exc:
                raise ContentKeyMissingError(
                    f"content key {path} cannot be read: {exc.strerror}", key_file=str(path)
                ) from None
            box = SecretBox(key, error=ContentUnreadableError, name=str(path))
            probe = _first_sealed(conn) if conn is not None else None
        finally:
            if conn is not None:
                conn.close()
        if probe is not None:
            table, column, row_key, value = probe
            box.open(value, context=context(table, column, row_key))  # raises on a wrong key
        _registry[db_path] = box
        return box


def box_for(db: sqlite_utils.Database | sqlite3.Connection) -> SecretBox:
    """The box of the home holding this database (loaded at open, or from its settings)."""
    path = _db_file(db)
    box = _registry.get(path)
    if box is not None:
        return box
    from securemail import config

    # A store opened without open_services (init, tests): the home's own settings say where.
    return load(config.load(path.parent))


def seal(db: sqlite_utils.Database, table: str, column: str, key: object, value: str) -> str:
    """The stored form of one content value ('' stays '': nothing to hide, nothing to purge)."""
    if value == "":
        return ""
    return box_for(db).seal(value, context=context(table, column, key))


def open_value(
    db: sqlite_utils.Database, table: str, column: str, key: object, stored: object
) -> str:
    """The plaintext of a stored content value; '' for empty or purged. Raises
    ContentUnreadableError for a plaintext, altered, moved or foreign value."""
    if stored is None or stored == "" or stored == b"":
        return ""
    if not SecretBox.is_sealed(stored):
        raise ContentUnreadableError(
            f"{table}.{column} holds a value that is not sealed", context=f"{table}/{key}"
        )
    return box_for(db).open(str(stored), context=context(table, column, key))


def forget(settings: Settings) -> None:
    """Drop the registered box of a home (tests that replace or remove the key file)."""
    with _lock:
        _registry.pop(settings.db_path.resolve(), None)
