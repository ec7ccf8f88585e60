"""The exchange room: a request's lifecycle: sending it sealed (send), viewing it, the
team's answer, changes and withdrawals, asks between teams, and escalation of overdue
requests.

May import: every room below it (frame, form, message, openpgp, audit, consent, services,
region, delivery, accounts, keys); not ops, home, web or cli.
"""
