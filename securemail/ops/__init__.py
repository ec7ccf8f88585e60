"""The ops room: running a home: backup and restore, content retention, health checks and
metrics, and the NTA 7516 provider declaration (nta).

May import: every room below it (frame, form, message, openpgp, audit, consent, services,
region, delivery, accounts, keys); not exchange, home, web or cli.
"""
