"""Seal documents for a team. Only seal() makes a SealedMessage; nothing else may.

Invariants (beyond those of keystore.KeyStore, which this Keyring extends):
- seal() makes one signature per message over the whole inner MIME entity (text, HTML,
  request.json, the GP's public key) and encrypts to exactly one pinned subkey of each
  recipient key: a GP's order (``keep_signed_order``) as RFC 3156 section 6.1 (a detached
  signature in multipart/signed, kept as ``SealedMessage.signed_order`` so that a pass-on
  can nest it unchanged), anything else as section 6.2 (combined sign+encrypt); it then reads
  the ciphertext's packets back (armor.encrypted_to) and refuses on any difference, and
  checks the result with the SMTP edge's check (sealcheck) before making a SealedMessage;
- the From address (envelope.from_address) is a user id of the signer's key, and the
  headers are protected inside the signature and encryption (mime.protected_headers);
- a refusal at any step raises and leaves nothing behind: no SealedMessage, no file.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from securemail.errors import InputError
from securemail.message import armor, mime, sealcheck
from securemail.message.mime import Envelope, SealInput
from securemail.openpgp import gpgproc
from securemail.openpgp.gpgproc import WatchedGPG, wire
from securemail.openpgp.keyinfo import (
    Fingerprint,
    KeyInfo,
    SubkeyInfo,
    encryption_subkey,
    parse_fingerprint,
    parse_listing,
    signing_fingerprints,
    unusable_reason,
    unusable_signer_reason,
)
from securemail.openpgp.keystore import (
    INV_RECP_WHY,
    AgentUnavailableError,
    DecryptionError,
    DecryptUnavailableError,
    KeyStore,
    RecipientKeyError,
    SealError,
    SealTimeoutError,
    SignerKeyError,
    SigningError,
    VerificationError,
    check_passphrase,
    fingerprint_arg,
)

__all__ = [
    "AgentUnavailableError",
    "Decrypted",
    "DecryptUnavailableError",
    "DecryptionError",
    "Envelope",
    "Fingerprint",
    "KeyInfo",
    "Keyring",
    "RecipientKeyError",
    "SealError",
    "SealInput",
    "SealTimeoutError",
    "SealedMessage",
    "SignerKeyError",
    "SigningError",
    "VerificationError",
]

_SEAL_TOKEN = object()

#: Why a key is revoked -> the OpenPGP reason code (RFC 4880 §5.2.3.23). "compromised" is a
#: hard revocation (distrust every signature); the others keep earlier signatures valid.
REVOCATION_REASONS = {"compromised": "1", "superseded": "2", "retired": "3"}


@dataclass(frozen=True, slots=True)
class SealedMessage:
    """A PGP/MIME (RFC 3156) message ready for SMTP; constructible only by seal()."""

    mime: bytes  # the whole RFC 5322 message, outer envelope included
    message_id: str  # "<...@...>", stable per delivery
    sender: str  # envelope MAIL FROM
    recipient: str  # envelope RCPT TO: the team's one entry address
    reference: str  # UVZ-...
    recipient_fingerprints: tuple[Fingerprint, ...]
    signer_fingerprint: Fingerprint
    _token: object = field(default=None, repr=False, compare=False)
    #: a detached GP signature over the canonical JSON that travels inside (request.json.asc):
    #: only when forwarding a request sealed before one signature per message; else b""
    json_signature: bytes = field(default=b"", repr=False)
    #: the GP's multipart/signed order (RFC 3156 6.1) exactly as encrypted; b"" for a seal
    #: that did not keep it. Patient content: stored only sealed at rest (contentbox).
    signed_order: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self._token is not _SEAL_TOKEN:
            raise TypeError("SealedMessage can only be made by openpgp.seal()")


@dataclass(frozen=True, slots=True)
class Decrypted:
    data: bytes
    signer: Fingerprint | None  # primary fingerprint of a good signature's key
    valid_signature: bool


class Keyring(KeyStore):
    """The gateway's keyring: key management (KeyStore) plus seal, revoke, verify, decrypt."""

    #: The last decrypt that failed on gpg's side (its reportable statuses), until one
    #: succeeds: the health check's gpg row shows it (the reply listener's 451s).
    decrypt_fault: str | None = None

    # -- seal ----------------------------------------------------------------------------

    async def seal(
        self,
        document: SealInput,
        *,
        signer: Fingerprint,
        passphrase: str | None,
        recipients: Sequence[Fingerprint],
        envelope: Envelope,
        now: datetime | None = None,
        json_signature: bytes | None = None,
        json_signer: Fingerprint | None = None,
        keep_signed_order: bool = False,
        forwarded_order: bytes | None = None,
    ) -> SealedMessage:
        """Sign and encrypt ``document`` for every recipient key, as RFC 3156 PGP/MIME.

        Refuses (RecipientKeyError) if any recipient key is unusable: the directory
        filters and reports beforehand; here a bad key means something changed.

        One signature per message: ``signer`` signs the whole inner entity (RFC 3156 6.2).
        Forwarding (a passed-on request), ``signer`` is the gateway's own key
        (``passphrase=None``: it has none). A request sealed before this gateway made one
        signature per message also has the GP's detached signature over ``document.json``:
        pass it as ``json_signature`` with ``json_signer`` (the GP's fingerprint); it is
        verified here (VerificationError unless it is a good signature by exactly that key)
        and travels unchanged as request.json.asc. Nothing is re-signed in the GP's name.

        ``keep_signed_order`` (a GP's order): RFC 3156 section 6.1 instead, one detached
        signature over the inner entity, then encryption without a second signature (one
        S2K, as before); the multipart/signed entity is returned as ``signed_order``.
        ``forwarded_order`` (a pass-on): that GP-signed entity, verified here to be a good
        signature by ``json_signer`` over its content, nested unchanged in the inner entity.
        """
        now = now or datetime.now(UTC)
        try:
            signer_fpr = parse_fingerprint(signer)
        except ValueError:
            raise SignerKeyError("signer is not a fingerprint", why="missing") from None
        try:
            pinned = tuple(dict.fromkeys(parse_fingerprint(r) for r in recipients))
        except ValueError:
            raise RecipientKeyError(
                "a recipient is not a pinned fingerprint", why="missing"
            ) from None
        if not pinned:
            raise RecipientKeyError("no recipient keys given", why="missing")
        # None, not "": python-gnupg still opens --passphrase-fd for "" but writes nothing,
        # and gpg would take the first line of the document as the passphrase.
        secret = None if passphrase is None else wire(check_passphrase(passphrase))
        forwarding = json_signature is not None or forwarded_order is not None
        if forwarding != (json_signer is not None):
            raise SealError("a forwarded signature needs its signer, and only then")
        envelope = envelope.resolved()
        infos = await self._lookup_many([signer_fpr, *pinned])
        signer_info = infos.get(signer_fpr)
        why = unusable_signer_reason(signer_info, now)
        if why or signer_info is None:
            raise SignerKeyError(f"signer key unusable: {why}", fingerprint=signer_fpr, why=why)
        subkeys: list[SubkeyInfo] = []
        for f in pinned:
            why = unusable_reason(infos.get(f), None, now)
            if why:
                raise RecipientKeyError(f"recipient key unusable: {why}", fingerprint=f, why=why)
            subkeys.append(encryption_subkey(infos[f], now))
        if envelope.from_address.lower() not in signer_info.uids:
            # Mail clients (Thunderbird, RNP) call a signature "uncertain" unless From is an
            # address on the signer's key: the signer and the sender must agree.
            raise SignerKeyError(
                "From is not an address on the signer's key",
                fingerprint=signer_fpr,
                why="from_not_on_key",
            )
        makers = signing_fingerprints(signer_info)

        # One signature per message (RFC 3156 section 6.2, combined sign+encrypt): it covers
        # the whole inner entity, request.json included. Each signature costs the GP's
        # key derivation (S2K) in gpg-agent, which caches nothing: one, not two.
        if json_signature is not None:  # forwarding a request sealed before that change
            made_by = await self.verify_detached(document.json, json_signature)
            if made_by != json_signer:
                raise VerificationError(
                    "the forwarded signature is not the original signer's",
                    expected=str(json_signer),
                    actual=str(made_by),
                )
        if forwarded_order is not None:
            await self._verify_order(forwarded_order, json_signer)
        inner = mime.build_inner(document, json_signature, envelope, forwarded_order)
        signed_order = b""

        def sign_then_encrypt(g: WatchedGPG) -> bytes:
            # RFC 3156 6.1: one detached signature (the one S2K), then encryption alone.
            nonlocal signed_order
            r = g.sign(
                inner,
                keyid=signer_fpr,
                passphrase=secret,
                detach=True,
                clearsign=False,
                extra_args=["--armor"],
            )
            signed_order = self._signed(inner, r, signer_fpr, makers)
            e = g.encrypt(
                signed_order,
                [s.fingerprint + "!" for s in subkeys],
                always_trust=True,
                armor=True,
                extra_args=["--no-encrypt-to"],
            )
            if e.returncode != 0 or not e.ok or not e.data.startswith(armor.BEGIN_MESSAGE.encode()):
                self._seal_failure("encrypt", e, signer_fpr)
            return bytes(e.data)

        def sign_encrypt(g: WatchedGPG) -> bytes:
            # --trust-model always (always_trust): trust comes from the reviewed directory
            # that pinned these fingerprints, not from gpg's web of trust; "!" pins the subkey.
            r = g.encrypt(
                inner,
                [s.fingerprint + "!" for s in subkeys],
                passphrase=secret,
                always_trust=True,
                armor=True,
                extra_args=["--sign", "--local-user", signer_fpr, "--no-encrypt-to"],
            )
            pairs = gpgproc.status(r)
            signed = any(k == "SIG_CREATED" and v.split()[-1] in makers for k, v in pairs)
            if (
                r.returncode != 0
                or not r.ok
                or not signed
                or not (r.data.startswith(armor.BEGIN_MESSAGE.encode()))
            ):
                self._seal_failure("sign+encrypt", r, signer_fpr)
            return bytes(r.data)

        if keep_signed_order:
            ciphertext = await self._call_signing("sign", signer_fpr, sign_then_encrypt)
        else:
            ciphertext = await self._call_signing("sign+encrypt", signer_fpr, sign_encrypt)
        expected = sorted(s.key_id for s in subkeys)
        try:
            actual = sorted(armor.encrypted_to(ciphertext))
        except ValueError as exc:
            raise SealError(f"gpg output is not a public-key encrypted message: {exc}") from None
        if actual != expected:
            raise SealError(
                "ciphertext is not encrypted to exactly the pinned subkeys",
                expected=",".join(expected),
                actual=",".join(actual),
            )
        # The envelope, and the SMTP edge's own check of it (sealcheck; it remembers these
        # bytes, so the outbox and the delivery worker do not parse them again), off the
        # event loop: together some milliseconds of the email package per message.
        raw = await asyncio.to_thread(_envelope, ciphertext, envelope)
        return SealedMessage(
            mime=raw,
            message_id=str(envelope.message_id),
            sender=envelope.sender,
            recipient=envelope.recipient,
            reference=document.reference,
            recipient_fingerprints=pinned,
            signer_fingerprint=signer_fpr,
            _token=_SEAL_TOKEN,
            json_signature=bytes(json_signature or b""),
            signed_order=signed_order,
        )

    async def _verify_order(self, order: bytes, signer: Fingerprint | None) -> None:
        """A forwarded multipart/signed order must carry a good signature by ``signer``."""
        try:
            content, signature = mime.signed_parts(order)
        except InputError:
            raise VerificationError("the forwarded order is not multipart/signed") from None
        made_by = await self.verify_detached(content, signature)
        if made_by != signer:
            raise VerificationError(
                "the forwarded order is not signed by the original signer",
                expected=str(signer),
                actual=str(made_by),
            )

    def _signed(
        self, content: bytes, r: Any, signer_fpr: Fingerprint, makers: frozenset[str]
    ) -> bytes:
        """multipart/signed of content from gpg's detached signature r, only when gpg made
        exactly one signature with one of the signer's own (sub)keys; else the failure.
        (r is python-gnupg's Sign result: the library ships no types.)"""
        created = [v.split() for k, v in gpgproc.status(r) if k == "SIG_CREATED" and v.split()]
        if (
            r.returncode != 0
            or len(created) != 1
            or created[0][-1] not in makers
            or not bytes(r.data).startswith(b"-----BEGIN PGP SIGNATURE-----")
        ):
            self._seal_failure("sign", r, signer_fpr)
        return mime.build_signed(content, bytes(r.data), int(created[0][2]))

    def _seal_failure(self, operation: str, result: object, signer: Fingerprint) -> NoReturn:
        # A gone gpg-agent first: gpg then also reports the signer as invalid (INV_SGNR 0,
        # "No agent running"), and the GP would be told that their key is unusable.
        if gpgproc.is_agent_failure(gpgproc.status(result)):
            self._fail(operation, result, fingerprint=signer)
        for keyword, value in gpgproc.status(result):
            if keyword == "INV_RECP":
                code, _, who = value.partition(" ")
                raise RecipientKeyError(
                    f"gpg refused a recipient key (INV_RECP {code})",
                    fingerprint=who.rstrip("!"),
                    why=INV_RECP_WHY.get(code, "invalid"),
                )
            if keyword == "INV_SGNR":
                code = value.partition(" ")[0]
                why = "missing" if code in ("1", "9") else INV_RECP_WHY.get(code, "invalid")
                raise SignerKeyError(
                    f"gpg refused the signer key (INV_SGNR {code})", fingerprint=signer, why=why
                )
        if gpgproc.GPG_ERR_NO_SECKEY in gpgproc.error_codes(gpgproc.status(result)):
            raise SignerKeyError("no secret key to sign with", fingerprint=signer, why="missing")
        self._fail(operation, result, fingerprint=signer)

    # -- revoke --------------------------------------------------------------------------

    async def revoke(self, fpr: str, passphrase: str, *, reason: str, comment: str = "") -> str:
        """Revoke the key with a revocation signed now, with ``reason`` (REVOCATION_REASONS)
        and a one-line ``comment``; import it here and return it armored for publication.

        The public key stays in the keyring: signatures made before stay checkable (gpg then
        reports REVKEYSIG with the signer's VALIDSIG), and nothing signs with it again.
        """
        f = fingerprint_arg(fpr)
        if reason not in REVOCATION_REASONS:
            raise InputError(
                f"reason must be one of {', '.join(REVOCATION_REASONS)}", field="reason"
            )
        if len(comment) > 200 or any(not c.isprintable() for c in comment):
            raise InputError("the comment is one printable line (at most 200)", field="comment")
        secret = check_passphrase(passphrase)
        # gpg asks on the command fd: sure? reason code, comment lines (an empty one ends
        # them), okay?, then the passphrase; --gen-revoke refuses --batch, hence --no-batch.
        lines = [
            "y",
            REVOCATION_REASONS[reason],
            *([comment] if comment else []),
            "",
            "y",
            secret,
        ]
        answers = ("\n".join(lines) + "\n").encode("utf-8")

        def work(g: WatchedGPG) -> str:
            args = ["--no-batch", "--command-fd", "0", "--armor", "--gen-revoke", f]
            r = g.run(args, data=answers)
            if r.returncode != 0 or not r.data.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK"):
                keywords = {k for k, _ in gpgproc.status(r)}
                if "NEED_PASSPHRASE" in keywords and not r.data:
                    # gpg reports a wrong passphrase here only in its (localised) text
                    raise SigningError("gpg revoke: bad passphrase", why="bad_passphrase")
                self._fail("revoke", r, fingerprint=f)
            return r.data.decode("ascii")

        certificate = await self._call_with_secret("revoke", f, work)
        await self.import_keys(certificate)
        if not (await self.key_info(f)).revoked:
            raise SealError("the revocation did not take effect", operation="revoke")
        return certificate

    async def sign_multipart(self, content: bytes, signer: Fingerprint) -> bytes:
        """RFC 3156 6.1: ``content`` (a MIME entity, CRLF lines) and one detached signature by
        ``signer``, a key without a passphrase (the gateway's own), as multipart/signed.
        SealError when gpg did not make exactly one signature by that key."""
        signer_fpr = parse_fingerprint(signer)
        infos = await self._lookup_many([signer_fpr])
        info = infos.get(signer_fpr)
        why = unusable_signer_reason(info, datetime.now(UTC))
        if why or info is None:
            raise SignerKeyError(f"signer key unusable: {why}", fingerprint=signer_fpr, why=why)
        makers = signing_fingerprints(info)

        def work(g: WatchedGPG) -> bytes:
            r = g.sign(
                content, keyid=signer_fpr, detach=True, clearsign=False, extra_args=["--armor"]
            )
            return self._signed(content, r, signer_fpr, makers)

        return await self._call_signing("sign", signer_fpr, work)

    # -- verify and decrypt --------------------------------------------------------------

    async def verify_detached(self, data: bytes, signature: bytes) -> Fingerprint:
        """The primary fingerprint of the one good signature; VerificationError otherwise."""

        def work(g: WatchedGPG) -> Fingerprint:
            # The signature (not secret) goes through a file; the data only through stdin.
            with tempfile.NamedTemporaryFile(dir=self.homedir, prefix="sig-") as f:
                f.write(signature)
                f.flush()
                r = g.verify_data(f.name, data)
            signer = _good_signer(r)
            if signer is None or r.returncode != 0:
                raise VerificationError(f"signature not valid: {gpgproc.summary(r)}")
            return signer

        return await self._call("verify", work)

    async def decrypt(self, data: bytes, passphrase: str | None) -> Decrypted:
        """Decrypt (and check the signature of) an OpenPGP message for one of our keys.

        Two failures, told apart because the sender acts on them differently:
        DecryptionError when gpg read the message and it cannot be opened here (not
        encrypted to a secret key this keyring holds, not OpenPGP, damaged: permanent);
        DecryptUnavailableError (or AgentUnavailableError, SealTimeoutError) when gpg
        itself failed (crashed, killed, no agent, no status at all: ours, temporary). gpg
        says NO_SECKEY also when its agent could not be reached, so a NO_SECKEY counts as
        "not for us" only when a fresh listing of our secret keys lacks that key id."""
        secret = None
        if passphrase is not None:
            secret = wire(check_passphrase(passphrase, DecryptionError))
        try:
            r = await self._call("decrypt", lambda g: g.decrypt(data, passphrase=secret))
        except SealError as exc:  # gpg hung (killed at the timeout) or could not run: ours
            self.decrypt_fault = exc.reason
            raise
        keywords = {k for k, _ in gpgproc.status(r)}
        opened = {"DECRYPTION_OKAY", "END_DECRYPTION"} <= keywords and not keywords & {
            "DECRYPTION_FAILED",
            "BADMDC",
        }
        if not (opened and (r.returncode == 0 or keywords & _SIGNATURE_VERDICTS)):
            await self._decrypt_failed(r)
        self.decrypt_fault = None
        signer = _good_signer(r)
        return Decrypted(data=bytes(r.data), signer=signer, valid_signature=signer is not None)

    async def _decrypt_failed(self, r: object) -> NoReturn:
        """Raise the failure of a decrypt: permanent (the message) or temporary (gpg)."""
        pairs = gpgproc.status(r)
        if not gpgproc.is_agent_failure(pairs) and not gpgproc.is_bad_passphrase(pairs):
            no_seckey = any(k == "NO_SECKEY" for k, _ in pairs)
            ours = await self._own_key_ids_or_none() if no_seckey else frozenset()
            if decrypt_verdict(pairs, getattr(r, "returncode", None), ours) == "temporary":
                self.decrypt_fault = gpgproc.summary(r)
                raise DecryptUnavailableError(
                    f"gpg decrypt failed (ours, temporary): {self.decrypt_fault}",
                    operation="decrypt",
                    status=self.decrypt_fault,
                )
        if gpgproc.is_agent_failure(pairs):
            self.decrypt_fault = gpgproc.summary(r)
        self._fail("decrypt", r, passphrase_error=DecryptionError, error=DecryptionError)

    async def _own_key_ids_or_none(self) -> frozenset[str] | None:
        """The key ids (16 hex, upper case) of every key whose secret this keyring holds,
        from a fresh listing; None when gpg could not list them (then nothing is "not ours")."""
        args = ["--with-fingerprint", "--with-fingerprint", "--list-secret-keys"]
        try:
            r = await self._call("list-secret-keys", lambda g: g.run(args))
        except SealError:
            return None
        if r.returncode != 0:
            return None
        infos = parse_listing(r.data.decode("latin-1"))
        return frozenset(sub.key_id.upper() for info in infos for sub in info.subkeys)

    async def recipients_of(self, ciphertext: bytes) -> tuple[str, ...]:
        """Key ids gpg itself reads from a message (--list-only); for checks and tests."""
        r = await self._call(
            "list-only", lambda g: g.run(["--list-only", "--decrypt"], data=ciphertext)
        )
        ids = tuple(v.split()[0] for k, v in gpgproc.status(r) if k == "ENC_TO")
        if not ids:
            self._fail("list-only", r)
        return ids


#: Statuses that say gpg judged a signature: a decrypted message with one of them exits 1 or 2
#: (a bad or unknown signature) and is still opened; the caller looks at ``signer``.
_SIGNATURE_VERDICTS = frozenset({"ERRSIG", "BADSIG", "NO_PUBKEY", "EXPKEYSIG", "REVKEYSIG"})
#: Statuses in which gpg says the message cannot be opened (it read it and gave a verdict).
_MESSAGE_VERDICTS = frozenset({"NODATA", "BADMDC", "DECRYPTION_FAILED", "NO_SECKEY"})


def decrypt_verdict(
    pairs: list[tuple[str, str]], returncode: int | None, own_key_ids: frozenset[str] | None
) -> str:
    """ "permanent" when a failed decrypt is the message's fault, else "temporary" (gpg's).

    Permanent only on positive evidence: gpg exited normally (2) and said the message is not
    OpenPGP, damaged, or encrypted to keys it has no secret for, none of which is ours. A gpg
    that was killed or crashed (no exit code, a signal, no status at all), or that said
    NO_SECKEY for a key we hold (its agent failed), is temporary: the sender tries again."""
    keywords = {k for k, _ in pairs}
    if returncode != 2 or not keywords & _MESSAGE_VERDICTS:
        return "temporary"
    missing = {v.split()[0].upper() for k, v in pairs if k == "NO_SECKEY" and v}
    if missing and (own_key_ids is None or missing & own_key_ids):
        return "temporary"
    return "permanent"


def _envelope(ciphertext: bytes, envelope: Envelope) -> bytes:
    raw = mime.build_outer(ciphertext, envelope)
    try:
        sealcheck.require_pgp_mime(raw)
    except sealcheck.NotSealedError as exc:  # pragma: no cover - build_outer makes exactly that
        raise SealError(f"sealed message is not PGP/MIME: {exc.reason}") from None
    return raw


def _good_signer(result: object) -> Fingerprint | None:
    """The primary fingerprint behind exactly one good signature and no bad one, else None."""
    pairs = gpgproc.status(result)
    bad = {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"}
    valid = [v.split() for k, v in pairs if k == "VALIDSIG"]
    goods = [k for k, _ in pairs if k == "GOODSIG"]
    if len(valid) != 1 or len(goods) != 1 or any(k in bad for k, _ in pairs):
        return None
    parts = valid[0]
    return Fingerprint(parts[9] if len(parts) > 9 else parts[0])
