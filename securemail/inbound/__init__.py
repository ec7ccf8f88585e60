"""The inbound room: nurses' replies to the gateway's reply addresses (replies), taken by
the gateway's own SMTP listener (listener, STARTTLS required).

May import: every room below it (frame, form, message, openpgp, audit, consent, services,
region, delivery, accounts, keys, exchange); not ops, home, web or cli.
"""
