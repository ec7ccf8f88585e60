"""The region room: the directory of organisations, teams and members, the region map of
which team serves which postcode, its views, and adherence to response deadlines.

May import: the frame, form, message, openpgp, audit, consent, services and delivery (the
outbox's own reads: when the relay took a message, for adherence).
"""
