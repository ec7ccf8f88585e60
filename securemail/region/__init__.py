"""The region room: the directory of organisations, teams and members, the region map of
which team serves which postcode, its views, and adherence to response deadlines.

May import: the frame, form, message, openpgp, audit, consent and services.
"""
