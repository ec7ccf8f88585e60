"""The reviewed regional key directory: keys/directory.toml and the armored keys beside it.

Invariants: ``load_manifest()`` returns a Manifest only when every entry is valid, and
each refusal names the entry (``team[2] wijkteam@...: member[1]: ...``) so a reviewer can
find it; every file in the folder is free of secret key material, checked on the packets
themselves (not only the armor line, which can lie) and without gpg; every key file a
member names is an armored public key inside the folder. Nothing here touches a keyring
or the database: ``keydir.sync`` does, from a Manifest.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securemail.errors import InputError
from securemail.form.fields import clean_text
from securemail.message import armor
from securemail.openpgp.keyinfo import Fingerprint, parse_fingerprint
from securemail.region.directory import EMAIL_RE

MANIFEST_NAME = "directory.toml"
VERSION = 1
PUBLIC_BLOCK = "PUBLIC KEY BLOCK"
_BLOCK_RE = re.compile(
    r"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----", re.DOTALL
)
# Split so that secret-key scanners do not flag this file.
_SECRET_MARK = "PRIVATE " + "KEY BLOCK"
_ORG_CODE_RE = re.compile(r"[0-9]{8}")
_TOP_KEYS = {"version", "region", "team"}
#: Longest text of a manifest entry (a name, a "verified how").
MAX_TEXT = 200
_TEAM_KEYS = {"address", "name", "organisation", "category", "member"}
_MEMBER_KEYS = {
    "name",
    "email",
    "fingerprint",
    "key",
    "verified_by",
    "verified_how",
    "verified_at",
}


class ManifestError(InputError):
    """The key directory is not valid; ``entry`` names where."""

    code = "keys.manifest_invalid"
    nl = "De regionale sleutelmap is ongeldig: {entry}."


@dataclass(frozen=True, slots=True)
class MemberEntry:
    """One pinned key: whose, which, in which file, and the review evidence."""

    name: str
    email: str
    fingerprint: Fingerprint
    key_file: str  # relative to the folder
    verified_by: str
    verified_how: str
    verified_at: str  # ISO date


@dataclass(frozen=True, slots=True)
class TeamEntry:
    address: str  # the team's one entry address
    name: str
    org_name: str
    org_code: str  # AGB or URA, 8 digits
    category: str
    members: tuple[MemberEntry, ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    folder: Path
    region: str
    teams: tuple[TeamEntry, ...]

    def pinned(self) -> dict[Fingerprint, str]:
        """Every pinned fingerprint -> the key file that must hold it."""
        return {m.fingerprint: m.key_file for t in self.teams for m in t.members}


def _text(where: str, table: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = table.get(key, "")
    if isinstance(value, dt.date):  # TOML dates for verified_at
        value = value.isoformat()
    if not isinstance(value, str) or (required and not value.strip()):
        raise ManifestError(f"{where}: {key} is required text", entry=f"{where}: {key}")
    # The one text policy (form.fields.clean_text): one line, no control or bidi-override
    # characters, NFC, bounded; refused here, before any key is imported.
    text, problem = clean_text(value, multiline=False, max_length=MAX_TEXT)
    if problem:
        raise ManifestError(
            f"{where}: {key} must be one line of at most {MAX_TEXT} characters without "
            "control or bidi-override characters",
            entry=f"{where}: {key}",
        )
    return text


def _only(where: str, table: object, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ManifestError(f"{where} must be a table", entry=where)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {unknown}", entry=where)
    return table


def _key_file(folder: Path, where: str, name: str) -> str:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or path.suffix != ".asc":
        raise ManifestError(
            f"{where}: key must name a .asc file inside the folder", entry=f"{where}: key"
        )
    if not (folder / path).is_file():
        raise ManifestError(f"{where}: key file {name} does not exist", entry=f"{where}: key")
    return path.as_posix()


def _member(folder: Path, where: str, raw: object) -> MemberEntry:
    table = _only(where, raw, _MEMBER_KEYS)
    email = _text(where, table, "email").lower()
    if not EMAIL_RE.match(email):
        raise ManifestError(f"{where}: email is not an address", entry=f"{where}: email")
    try:
        fpr = parse_fingerprint(_text(where, table, "fingerprint"))
    except ValueError:
        raise ManifestError(
            f"{where}: fingerprint must be 40 hexadecimal digits (spaces allowed)",
            entry=f"{where}: fingerprint",
        ) from None
    verified_at = _text(where, table, "verified_at")
    try:
        dt.date.fromisoformat(verified_at)
    except ValueError:
        raise ManifestError(
            f"{where}: verified_at must be a date (YYYY-MM-DD)", entry=f"{where}: verified_at"
        ) from None
    return MemberEntry(
        name=_text(where, table, "name"),
        email=email,
        fingerprint=fpr,
        key_file=_key_file(folder, where, _text(where, table, "key")),
        verified_by=_text(where, table, "verified_by"),
        verified_how=_text(where, table, "verified_how"),
        verified_at=verified_at,
    )


def _team(folder: Path, index: int, raw: object) -> TeamEntry:
    where = f"team[{index}]"
    table = _only(where, raw, _TEAM_KEYS)
    address = _text(where, table, "address").lower()
    if not EMAIL_RE.match(address):
        raise ManifestError(f"{where}: address is not an address", entry=f"{where}: address")
    where = f"team[{index}] {address}"
    org = _only(f"{where}: organisation", table.get("organisation"), {"name", "agb", "ura"})
    codes = [str(org[k]).strip() for k in ("agb", "ura") if k in org]
    if len(codes) != 1 or not _ORG_CODE_RE.fullmatch(codes[0]):
        raise ManifestError(
            f"{where}: organisation needs one 8-digit agb or ura code (as text)",
            entry=f"{where}: organisation",
        )
    members_raw = table.get("member", [])
    if not isinstance(members_raw, list):
        raise ManifestError(f"{where}: member must be [[team.member]] tables", entry=where)
    members = tuple(
        _member(folder, f"{where}: member[{i}]", m) for i, m in enumerate(members_raw, 1)
    )
    for attr in ("email", "fingerprint"):
        seen = [getattr(m, attr) for m in members]
        dupes = sorted({v for v in seen if seen.count(v) > 1})
        if dupes:
            raise ManifestError(
                f"{where}: {attr} listed more than once: {', '.join(dupes)} "
                "(one key per member; a change of key replaces the old one)",
                entry=f"{where}: {attr}",
            )
    return TeamEntry(
        address=address,
        name=_text(where, table, "name"),
        org_name=_text(f"{where}: organisation", org, "name"),
        org_code=codes[0],
        category=_text(where, table, "category", required=False) or "wijkverpleging",
        members=members,
    )


def load_manifest(folder: Path) -> Manifest:
    """Parse and validate ``folder/directory.toml`` and check every file in the folder."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist", entry=MANIFEST_NAME) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid TOML: {exc}", entry=MANIFEST_NAME) from None
    _only(MANIFEST_NAME, raw, _TOP_KEYS)
    if raw.get("version") != VERSION:
        raise ManifestError(f"version must be {VERSION}", entry="version")
    teams_raw = raw.get("team", [])
    if not isinstance(teams_raw, list):
        raise ManifestError("team must be [[team]] tables", entry="team")
    teams = tuple(_team(folder, i, t) for i, t in enumerate(teams_raw, 1))
    addresses = [t.address for t in teams]
    dupes = sorted({a for a in addresses if addresses.count(a) > 1})
    if dupes:
        raise ManifestError(f"team address listed twice: {', '.join(dupes)}", entry="team")
    names: dict[str, str] = {}
    for t in teams:
        if names.setdefault(t.org_code, t.org_name) != t.org_name:
            raise ManifestError(
                f"organisation {t.org_code} has two names", entry=f"organisation {t.org_code}"
            )
    check_folder(folder)
    return Manifest(folder, _text("manifest", raw, "region", required=False), teams)


def public_key_data(text: str, where: str) -> bytes:
    """The binary certificates of an armored file: one or more PUBLIC KEY BLOCKs, nothing
    else around them, and no secret key packet inside (ManifestError otherwise)."""
    if _SECRET_MARK in text:
        raise ManifestError(f"{where} holds secret key material", entry=where)
    blocks = _BLOCK_RE.findall(text)
    if not blocks or _BLOCK_RE.sub("", text).strip():
        raise ManifestError(f"{where} must hold armored public keys only", entry=where)
    data = b""
    for block in blocks:
        try:
            packets = armor.dearmor(block, block=PUBLIC_BLOCK)
            armor.require_public_keys(packets)
        except ValueError as exc:
            raise ManifestError(f"{where}: {exc}", entry=where) from None
        data += packets
    return data


def check_folder(folder: Path) -> None:
    """Refuse a folder that holds secret key material anywhere, a key file that is not an
    armored public key, or any other kind of file (a binary key could hide in it)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        where = path.relative_to(folder).as_posix()
        raw = path.read_bytes()
        if path.suffix == ".md" or not raw:
            continue  # the README may name the armor line to explain the rule
        if _SECRET_MARK.encode() in raw:
            raise ManifestError(f"{where} holds secret key material", entry=where)
        if path.suffix == ".asc":
            public_key_data(raw.decode("ascii", "replace"), where)
        elif where != MANIFEST_NAME:
            raise ManifestError(
                f"{where}: only {MANIFEST_NAME}, .asc public keys and .md belong here",
                entry=where,
            )
