"""The openpgp room: signing and sealing with gpg (python-gnupg): the keyring, the key
store, key listings (keyinfo) and the watched gpg processes.

May import: the frame and the message room.
"""
