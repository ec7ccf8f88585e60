"""The accounts room: users and password hashing (auth), sessions, TOTP second factors and
API tokens for practice systems.

May import: the frame, form, message, openpgp, audit, consent, services and the region
room (a user belongs to an organisation and a team).
"""
