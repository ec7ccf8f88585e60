"""Imports every module that owns tables, so Store.migrate() sees all migration sets.

Order matters: sets are applied in the order their modules are first imported, and later
tables reference earlier ones (users -> organisations, requests -> teams and users).
(asks' set may apply before auth's: SQLite checks a REFERENCES clause on insert, not on
CREATE TABLE; asks uses exchange's counters table only at run time.) retention's migration seals the
content columns of the tables listed before it.
"""
