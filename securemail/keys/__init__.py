"""The keys room: the reviewed key directory (manifest, and pinning it into the teams'
fingerprints), the key lifecycle's foresight (expiry warnings), GPs' own keys and WKD.

May import: the frame, form, message, openpgp, audit, consent, services, region, delivery
and accounts.
"""
