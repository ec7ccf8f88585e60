"""Imports every module that owns tables, so Store.migrate() sees all migration sets.

Order matters: sets are applied in the order their modules are first imported, and later
tables reference earlier ones (users -> organisations, requests -> teams and users).
"""

from securemail import (  # noqa: F401
    audit,
    auth,
    consent,
    directory,
    exchange,
    gateway,
    outbox,
    session,
    audit_integrity,
    audit_report,
    audit_review,
)
