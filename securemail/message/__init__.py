"""The message room: message formats with no gpg and no network: ASCII armour, RFC 3156
PGP/MIME, the plain notification mails, and the check that a message is sealed.

May import: the frame only.
"""
