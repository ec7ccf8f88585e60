"""Imports every module that owns tables, so Store.migrate() sees all migration sets.

Order matters: sets are applied in the order their modules are first imported, and later
tables reference earlier ones (users -> organisations, requests -> teams and users).
(asks' set may apply before auth's: SQLite checks a REFERENCES clause on insert, not on
CREATE TABLE; asks uses exchange's counters table only at run time.) retention's migration seals the
content columns of the tables listed before it.
"""

from securemail import apitoken, asks, auth, consent, exchange, gateway, gpkeys, health, retention
from securemail.delivery import outbox
from securemail.region import directory
from securemail.region import map as regionmap
from securemail.audit import trail as audit
from securemail.audit import integrity as audit_integrity
from securemail.audit import report as audit_report
from securemail.audit import review as audit_review
    session,
    totp,
)
