"""The delivery room: the durable outbox (queued in the same transaction as its audit row),
the delivery worker and the SMTP relay it speaks to (STARTTLS required).

May import: the frame, form, message, openpgp, audit, consent and services.
"""
