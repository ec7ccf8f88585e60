"""Imports every module that owns tables, so Store.migrate() sees all migration sets.

Order matters: sets are applied in the order their modules are first imported.
"""

from securemail import audit, audit_integrity, audit_report, audit_review  # noqa: F401
