"""The keyed search tokens of a request's patient name (``request_name_tokens``): a name
search finds its candidates on an index instead of opening every sealed document.

Invariants:

- a token is the first TOKEN_BYTES of an HMAC-SHA256 of one normalised word of the name
  (casefolded, accents stripped, split on anything not a letter, words of MIN_WORD letters
  or more) under a key derived (HKDF) from the home's content key, which lives beside the
  database file, never in it: a copy of the database alone links equal name words across
  rows (as the BSN column links a patient's rows) but names nobody;
- every request row written with a document has its tokens written in the same
  transaction (``store``); the content purge deletes them with the document
  (ops/retention.py); rows stored before the tokens existed get theirs from migration
  ``0010_request_name_tokens`` (one pass when the home is opened);
- a token row carries its request's practice and team (a trigger moves the team with a
  pass-on), so a search reads the matches of its own scope on an index; the scope itself is
  decided on the requests row, as for every list;
- a query is bounded: at most MAX_WORDS words are looked up.
"""

from __future__ import annotations

import re
import unicodedata

import sqlite_utils

from securemail import contentbox
from securemail.secretbox import SecretBox

TOKEN_BYTES = 8
MIN_WORD = 2
#: A query's words looked up (a name has few; more only multiplies the lookups).
MAX_WORDS = 5
_PURPOSE = "securemail.name-token.v1"
_LETTERS = re.compile(r"[^\W\d_]+")


def words(text: str) -> list[str]:
    """The distinct normalised words of text: 'Müller-Jansen, J.' -> ['jansen', 'muller']."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    return sorted({w for w in _LETTERS.findall(plain) if len(w) >= MIN_WORD})


def tokens_with(box: SecretBox, text: str) -> list[bytes]:
    """The tokens of text's words under box's derived keyed-hash key."""
    return [
        bytes.fromhex(box.keyed_hash(w.encode("utf-8"), purpose=_PURPOSE))[:TOKEN_BYTES]
        for w in words(text)
    ]


def tokens(db: sqlite_utils.Database, text: str) -> list[bytes]:
    """The tokens of text's words in this home (its content key)."""
    return tokens_with(contentbox.box_for(db), text)


#: (token, practice_org_id, team_id, request_id): one token row
Row = tuple[bytes, int, int, int]


def store(db: sqlite_utils.Database, reference: str, name: str) -> None:
    """Write the tokens of a request's patient name (replacing any it had), with its
    practice and team (the scope a search reads them in)."""
    request_id, practice, team = db.execute(
        "SELECT id, practice_org_id, team_id FROM requests WHERE reference = ?", [reference]
    ).fetchone()
    db.execute("DELETE FROM request_name_tokens WHERE request_id = ?", [request_id])
    insert(db, [(t, practice, team, request_id) for t in tokens(db, name)])


def insert(db: sqlite_utils.Database, rows: list[Row]) -> None:
    db.conn.executemany(
        "INSERT OR IGNORE INTO request_name_tokens (token, practice_org_id, team_id, request_id) "
        "VALUES (?, ?, ?, ?)",
        rows,
    )


def query_tokens(db: sqlite_utils.Database, query: str) -> list[bytes]:
    """The tokens of a search text's first MAX_WORDS words (none: nothing to look up)."""
    return tokens_with(contentbox.box_for(db), " ".join(words(query)[:MAX_WORDS]))
