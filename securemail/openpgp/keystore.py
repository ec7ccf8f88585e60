"""The gateway's gpg keyring: a safe homedir, gpg run under watch, keys and their checks.

Invariants:
- every gpg call runs off the event loop, at most ``max_concurrency`` at once
  (python-gnupg#120), under a watchdog that kills gpg at ``timeout`` (gpgproc);
- every python-gnupg result is checked (status lines, exit code, output), because
  python-gnupg never raises on a crypto failure; anything short of success raises a
  SealError subclass whose reason carries status codes and fingerprints, never content;
- gpg-agent never caches a passphrase: ``create()`` writes a gpg-agent.conf with TTL 0,
  and opening a keyring refuses a homedir without it, or one that is not mode 0700;
  the conf also fixes the S2K calibration ([gpg] s2k_calibration_ms) used when gpg-agent
  protects a key: a setting of cost, never of caching;
- keys are named by full fingerprints only, never by e-mail address or key id;
- signatures run in a pool of ``signers`` homes (openpgp.signers: the primary homedir and
  signer homes linked to its keys), each with its own gpg-agent, handed out in turn by
  signing key; everything else runs in the primary homedir under the semaphore, so no
  listing, check or verification waits behind a signature's S2K. A signature whose gpg
  failed for another reason than its passphrase or its keys is retried once with a fresh
  gpg-agent, then refused; nothing is ever sent unsigned. A gone agent (killed, crashed,
  not startable: gpgproc.AGENT_ERRORS) is AgentUnavailableError, a passing 503, never
  reported as the signer's key or passphrase.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, Self, TypeVar

from securemail.config import MAX_SIGNERS, GpgSettings
from securemail.errors import ConfigError, InputError, NotFoundError, SecuremailError
from securemail.message import armor, mime
from securemail.openpgp import gpgproc, signers
from securemail.openpgp.gpgproc import WatchedGPG, wire
from securemail.openpgp.keyinfo import (
    Fingerprint,
    KeyInfo,
    parse_fingerprint,
    parse_listing,
    unusable_reason,
)

T = TypeVar("T")

AGENT_CONF = """\
# Written by securemail. Passphrases reach gpg-agent only through loopback from the
# gateway, and are never cached: a wrong passphrase right after a right one must fail.
allow-loopback-pinentry
default-cache-ttl 0
max-cache-ttl 0
"""
# gpg-agent's own default; see [gpg] s2k_calibration_ms and docs/performance.md.
DEFAULT_S2K_CALIBRATION_MS = 100
GPG_CONF = """\
# Written by securemail. Trust in recipient keys comes from the reviewed keys/ directory
# (pinned fingerprints), not from gpg's web of trust; never fetch keys from the network.
trust-model direct
no-auto-key-retrieve
"""
_OPTIONS = ["--pinentry-mode", "loopback", "--display-charset", "utf-8", "--no-auto-key-retrieve"]
_EXPIRE_RE = re.compile(r"0|never|\d{1,4}[dwmy]?|\d{4}-\d{2}-\d{2}|\d{8}T\d{6}")
INV_RECP_WHY = {"1": "missing", "3": "no_encryption_subkey", "4": "revoked", "5": "expired"}
_WHY_NL = {
    "missing": "niet gevonden",
    "expired": "verlopen",
    "revoked": "ingetrokken",
    "invalid": "ongeldig",
    "no_encryption_subkey": "niet geschikt om naar te versleutelen",
    "too_weak": "te zwak",
    "address_mismatch": "hoort niet bij dit adres",
    "no_signing_key": "niet geschikt om mee te ondertekenen",
    "not_pinned": "niet vastgelegd in de regionale sleutelmap",
    "quarantined": "gewijzigd en nog niet telefonisch bevestigd",
}


def reason_nl(why: str) -> str:
    """The Dutch words for a key's ``why`` (keyinfo.WHY), as pages show them."""
    return _WHY_NL.get(why, "onbruikbaar")


class SealError(SecuremailError):
    """gpg could not do what was asked; nothing was sealed (or verified, or decrypted)."""

    code = "seal.failed"
    nl = "Het bericht kon niet veilig worden versleuteld en ondertekend. Er is niets verzonden."
    http_status = 503


class _WhyError(SealError):
    def message_nl(self) -> str:
        return self.nl.format(why=_WHY_NL.get(str(self.context.get("why")), "onbruikbaar"))


class RecipientKeyError(_WhyError):
    code = "seal.key_unusable"
    nl = "De sleutel van een ontvanger is {why}. Er is niets verzonden."
    http_status = 409


class SignerKeyError(_WhyError):
    code = "seal.signer_unusable"
    nl = "Uw ondertekeningssleutel is {why}. Er is niets verzonden."
    http_status = 409


class SigningError(SealError):
    code = "seal.bad_passphrase"
    nl = "De ondertekeningswachtzin is onjuist."
    http_status = 400


class SealTimeoutError(SealError):
    code = "seal.timeout"
    nl = "Versleutelen duurde te lang en is afgebroken. Er is niets verzonden."


class AgentUnavailableError(SealError):
    """gpg-agent went away (killed, crashed) or could not be started: a passing fault of the
    gateway's own, never the GP's key or passphrase. Nothing was sealed, stored or sent;
    the same send may simply be tried again (gpg starts a fresh agent)."""

    code = "seal.agent_unavailable"
    nl = (
        "De ondertekendienst van de gateway was even niet beschikbaar. Er is niets verzonden "
        "en niets bewaard; probeer het over een halve minuut opnieuw."
    )
    retry_after = 30


class VerificationError(SealError):
    code = "openpgp.bad_signature"
    nl = "De handtekening klopt niet."
    http_status = 400


class DecryptionError(SealError):
    code = "openpgp.decrypt_failed"
    nl = "Het bericht kon niet worden ontsleuteld."
    http_status = 400


class DecryptUnavailableError(SealError):
    """gpg failed while decrypting (crashed, killed, no status): the gateway's fault and a
    passing one, never "not for this key". Nothing was read; the same message may be tried
    again (the reply listener answers 451, so the sender's server does)."""

    code = "openpgp.decrypt_unavailable"
    nl = (
        "Het bericht kon door een storing bij de gateway nu niet worden ontsleuteld; er is "
        "niets bewaard. Probeer het later opnieuw."
    )
    retry_after = 30


def fingerprint_arg(value: str) -> Fingerprint:
    """A full fingerprint from a caller, or InputError (never a gpg search pattern)."""
    try:
        return parse_fingerprint(value)
    except (ValueError, AttributeError):
        raise InputError("not a 40-hex-digit OpenPGP fingerprint", field="fingerprint") from None


def check_passphrase(passphrase: object, error: type[SealError] = SigningError) -> str:
    if not isinstance(passphrase, str) or not passphrase:
        raise error("a passphrase is required", why="bad_passphrase")
    if any(c in passphrase for c in "\r\n\0"):
        raise error("a passphrase may not contain line breaks or NUL", why="bad_passphrase")
    return passphrase


def _check_homedir(homedir: Path, signer_count: int = 1) -> None:
    try:
        st = homedir.stat()
    except FileNotFoundError:
        raise ConfigError(f"gpg homedir {homedir} does not exist", setting="gpg homedir") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o077 or st.st_uid != os.getuid():
        raise ConfigError(
            f"gpg homedir {homedir} must be a directory of this user with mode 0700",
            setting="gpg homedir",
        )
    try:
        lines = (homedir / "gpg-agent.conf").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    options = dict(line.strip().partition(" ")[::2] for line in lines if line.strip())
    if options.get("default-cache-ttl", "").strip() != "0" or (
        options.get("max-cache-ttl", "").strip() != "0"
    ):  # the last occurrence of an option wins, in gpg-agent as in this dict
        raise ConfigError(
            "gpg-agent.conf must set default-cache-ttl 0 and max-cache-ttl 0",
            setting="gpg homedir",
        )
    # Without /run/user/<uid>, gpg-agent's sockets live in the homedir, and sun_path holds
    # 107 bytes: "<homedir>/S.gpg-agent.browser" must fit, or the agent cannot start.
    # Signer homes add "/s<N>" to that.
    longest = os.fsencode(signers.signer_home(homedir, signer_count - 1))
    if not Path(f"/run/user/{os.getuid()}").is_dir() and len(longest) > 87:
        raise ConfigError(
            f"gpg homedir path {longest.decode(errors='replace')} is longer than gpg-agent's"
            " sockets allow (87 bytes)",
            setting="gpg homedir",
        )


class KeyStore:
    """A gpg homedir and the keys in it; openpgp.Keyring adds seal, verify and decrypt."""

    def __init__(
        self,
        homedir: Path,
        *,
        binary: str = "gpg",
        timeout: float = 30.0,
        max_concurrency: int = 2,
        key_cache_seconds: float = 60.0,
        signer_count: int = 1,
    ) -> None:
        self.homedir = Path(homedir).absolute()
        if timeout <= 0 or max_concurrency < 1 or signer_count < 1:
            raise ConfigError("gpg timeout and concurrency must be positive", setting="gpg")
        _check_homedir(self.homedir, signer_count)
        self.signer_count = signer_count
        self._pool = signers.SignerPool(signer_count)
        self._signer_gpg: dict[int, WatchedGPG] = {}
        self.binary = binary
        self.timeout = float(timeout)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._gpg: WatchedGPG | None = None
        self._gpg_lock = threading.Lock()
        self._cache_seconds = key_cache_seconds
        self._cache: dict[Fingerprint, tuple[float, KeyInfo]] = {}
        self._exports: dict[Fingerprint, str] = {}  # armored public keys (the GP's, per send)
        self._ring_state: tuple[int, int, int] | None = None
        # Secret keys this keyring has unlocked at least once, and the locks that keep the
        # first unlock of each one alone (see _call_with_secret).
        self._unlocked: set[Fingerprint] = set()
        self._first_unlock: dict[Fingerprint, asyncio.Lock] = {}

    @classmethod
    def create(
        cls,
        homedir: Path,
        *,
        s2k_calibration_ms: int = DEFAULT_S2K_CALIBRATION_MS,
        **kwargs: Any,
    ) -> Self:
        """Make (or repair) a homedir: mode 0700, no passphrase caching, direct trust."""
        homedir = Path(homedir)
        homedir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(homedir, 0o700)
        path = homedir / "gpg.conf"
        path.write_text(GPG_CONF, encoding="utf-8")
        os.chmod(path, 0o600)
        write_agent_conf(homedir, s2k_calibration_ms, kwargs.get("binary", "gpg"), force=True)
        return cls(homedir, **kwargs)

    @classmethod
    def from_settings(cls, homedir: Path, gpg: GpgSettings, **kwargs: Any) -> Self:
        """Open ``homedir`` with the ``[gpg]`` settings (binary, timeout, concurrency, S2K)."""
        if Path(homedir).is_dir():  # a missing homedir is _check_homedir's to report
            write_agent_conf(Path(homedir), gpg.s2k_calibration_ms, gpg.binary)
        return cls(
            homedir,
            binary=gpg.binary,
            timeout=gpg.timeout_seconds,
            max_concurrency=gpg.max_concurrency,
            signer_count=gpg.signers or min(len(os.sched_getaffinity(0)), MAX_SIGNERS),
            **kwargs,
        )

    # -- running gpg -------------------------------------------------------------------

    def _instance(self, signer: int = 0) -> WatchedGPG:
        with self._gpg_lock:
            if signer:
                if signer not in self._signer_gpg:  # links made (or repaired) on first use
                    home = signers.ensure_signer_home(self.homedir, signer)
                    self._signer_gpg[signer] = self._new_gpg(home)
                return self._signer_gpg[signer]
            if self._gpg is None:
                self._gpg = self._new_gpg(self.homedir)
            return self._gpg

    def _new_gpg(self, home: Path) -> WatchedGPG:
        gpg = WatchedGPG(gpgbinary=self.binary, gnupghome=str(home), options=list(_OPTIONS))
        if not gpg.version or gpg.version < (2, 2):
            raise SealError("gpg 2.2 or later is required", operation="version")
        return gpg

    def _watched(self, operation: str, fn: Callable[[WatchedGPG], T], signer: int = 0) -> T:
        failure: Exception | None = None
        with gpgproc.watch(self.timeout) as w:
            try:
                result = fn(self._instance(signer))
            except Exception as exc:  # decided below, once the watch has closed
                failure = exc
        if w.expired:  # whatever the killed gpg left behind, the answer is: timed out
            raise SealTimeoutError(
                f"gpg {operation} was killed after {self.timeout:g} s", operation=operation
            )
        if isinstance(failure, OSError | ValueError):  # python-gnupg: gpg did not run
            raise SealError(
                f"gpg {operation} could not run ({type(failure).__name__})", operation=operation
            ) from None
        if failure is not None:
            raise failure
        return result

    async def _call(self, operation: str, fn: Callable[[WatchedGPG], T]) -> T:
        async with self._semaphore:
            return await asyncio.to_thread(self._watched, operation, fn)

    async def _call_with_secret(
        self, operation: str, fpr: Fingerprint, fn: Callable[[WatchedGPG], T]
    ) -> T:
        """``_call`` for an operation that unlocks the secret key ``fpr``.

        gpg-agent keeps an imported secret key in its OpenPGP transfer format and rewrites
        the key file, in place, the first time the key is unlocked; a second unlock reading
        that file meanwhile fails as a bad passphrase or a broken S-expression (gpg 2.2).
        So the first unlock of each key in this keyring runs alone; once one has
        succeeded, unlocks run side by side (the semaphore still caps them).
        """
        if fpr not in self._unlocked:
            async with self._first_unlock.setdefault(fpr, asyncio.Lock()):
                if fpr not in self._unlocked:
                    result = await self._call(operation, fn)
                    self._unlocked.add(fpr)
                    return result
        return await self._call(operation, fn)

    async def _call_signing(
        self, operation: str, fpr: Fingerprint, fn: Callable[[WatchedGPG], T]
    ) -> T:
        """``_call_with_secret`` for a signature: in a signing home of the pool, in turn by
        signing key, retried once with a fresh gpg-agent when gpg failed for another reason
        than the passphrase or the keys (a crashed agent); refused after that."""
        if fpr not in self._unlocked:  # the first unlock alone, as in _call_with_secret
            async with self._first_unlock.setdefault(fpr, asyncio.Lock()):
                if fpr not in self._unlocked:
                    result = await self._sign_in_pool(operation, fpr, fn)
                    self._unlocked.add(fpr)
                    return result
        return await self._sign_in_pool(operation, fpr, fn)

    async def _sign_in_pool(
        self, operation: str, fpr: Fingerprint, fn: Callable[[WatchedGPG], T]
    ) -> T:
        for attempt in (1, 2):
            index = await self._pool.acquire(fpr)
            try:
                return await asyncio.to_thread(self._watched, operation, fn, index)
            except SealError as exc:
                if type(exc) not in (SealError, SealTimeoutError, AgentUnavailableError):
                    raise  # the passphrase, a key: the same answer in every home
                # gpg or its agent broke (crashed, killed, hung): the next gpg call in this
                # home starts a fresh gpg-agent. A timeout is not worth waiting for twice.
                home = signers.signer_home(self.homedir, index)
                await asyncio.to_thread(kill_agent, home, self.binary)
                if attempt == 2 and isinstance(exc, AgentUnavailableError):
                    raise AgentUnavailableError(
                        f"gpg {operation}: gpg-agent unavailable twice, the second time"
                        f" after a restart; refused, nothing sent: {exc}",
                        operation=operation,
                        status=str(exc.context.get("status", "")),
                    ) from None
                if attempt == 2:
                    raise SealError(
                        f"gpg {operation} failed twice, the second time with a fresh"
                        f" gpg-agent; refused, nothing sent: {exc}",
                        operation=operation,
                        status=str(exc.context.get("status", "")),
                    ) from None
                if isinstance(exc, SealTimeoutError):
                    raise
            finally:
                self._pool.release(index)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _fail(
        operation: str,
        result: object,
        *,
        passphrase_error: type[SealError] = SigningError,
        error: type[SealError] = SealError,
        **context: Any,
    ) -> NoReturn:
        """Raise for a failed gpg result: a passphrase error, or ``error`` with the statuses."""
        pairs = gpgproc.status(result)
        if gpgproc.is_bad_passphrase(pairs):
            raise passphrase_error(
                f"gpg {operation}: bad passphrase", why="bad_passphrase", **context
            )
        summary = gpgproc.summary(result)
        if gpgproc.is_agent_failure(pairs):
            raise AgentUnavailableError(
                f"gpg {operation}: gpg-agent unavailable: {summary}",
                operation=operation,
                status=summary,
                **context,
            )
        raise error(
            f"gpg {operation} failed: {summary}", operation=operation, status=summary, **context
        )

    def _forget(self) -> None:
        self._cache.clear()
        self._exports.clear()

    def _revalidate(self) -> None:
        """Forget cached listings and exports when the keyring file changed (an import,
        revocation or deletion, by this process or another, e.g. a CLI call next to serve).
        gpg rewrites pubring.kbx on every key change; signing and encrypting never do."""
        try:
            st = os.stat(self.homedir / "pubring.kbx")
            state: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            state = None
        if state != self._ring_state:
            self._forget()
            self._ring_state = state

    async def close(self) -> None:
        """Stop this homedir's gpg-agent (it holds no passphrases, but needs no process)."""
        await asyncio.to_thread(kill_agents, self.homedir, self.binary)

    # -- keys --------------------------------------------------------------------------

    async def generate_key(
        self,
        name: str,
        email: str,
        passphrase: str | None,
        *,
        kind: str = "signing",
        expire: str = "0",
    ) -> Fingerprint:
        """An ed25519 key (plus a cv25519 encryption subkey for kind encryption/both)."""
        if kind not in ("signing", "encryption", "both"):
            raise InputError("kind must be signing, encryption or both", field="kind")
        if not _EXPIRE_RE.fullmatch(expire):
            raise InputError("expire must be 0, a period like 2y or a date", field="expire")
        uid = f"{name} <{email}>"
        if not name.strip() or name.strip() != name or any(c in name for c in "\r\n\0<>"):
            raise InputError("name may not be empty or contain line breaks or <>", field="name")
        if not mime.ADDRESS_RE.fullmatch(email):
            raise InputError("email is not a bare e-mail address", field="email")
        secret = "" if passphrase is None else check_passphrase(passphrase, SealError)

        def work(g: WatchedGPG) -> Fingerprint:
            usage = "cert" if kind == "encryption" else "sign"
            args = ["--yes", "--quick-gen-key", uid, "ed25519", usage, expire]
            r = g.run(args, passphrase=wire(secret))
            if gpgproc.GPG_ERR_CORRUPTED_PROTECTION in gpgproc.error_codes(gpgproc.status(r)):
                # gpg-agent 2.2 now and then fails the self-signature of a key it has just
                # made and protected ("Corrupted protection"; KEY_NOT_CREATED, no public key
                # written). Seen in our suite about once in 25 runs: try once more.
                r = g.run(args, passphrase=wire(secret))
            created = [v.split() for k, v in gpgproc.status(r) if k == "KEY_CREATED"]
            if r.returncode != 0 or not created or created[0][0] != "P":
                self._fail("generate", r, passphrase_error=SealError)
            fpr = Fingerprint(created[0][1])
            if kind != "signing":
                r = g.run(
                    ["--quick-add-key", fpr, "cv25519", "encr", expire], passphrase=wire(secret)
                )
                if r.returncode != 0 or not any(
                    k == "KEY_CREATED" and v.startswith("S ") for k, v in gpgproc.status(r)
                ):
                    g.run(["--yes", "--delete-secret-and-public-key", fpr])  # no half keys
                    self._fail("add-subkey", r, passphrase_error=SealError)
            return fpr

        try:
            return await self._call("generate", work)
        finally:
            self._forget()

    async def add_uid(self, fpr: str, name: str, email: str, passphrase: str | None) -> None:
        """Add the user id ``name <email>`` to our key ``fpr`` (a no-op when an unrevoked
        user id already has that address): the From of what the key signs must be on it."""
        f = fingerprint_arg(fpr)
        if not name.strip() or name.strip() != name or any(c in name for c in "\r\n\0<>"):
            raise InputError("name may not be empty or contain line breaks or <>", field="name")
        if not mime.ADDRESS_RE.fullmatch(email):
            raise InputError("email is not a bare e-mail address", field="email")
        if email.lower() in (await self.key_info(f)).uids:
            return
        secret = "" if passphrase is None else check_passphrase(passphrase, SealError)

        def work(g: WatchedGPG) -> None:
            r = g.run(["--quick-add-uid", f, f"{name} <{email}>"], passphrase=wire(secret))
            if r.returncode != 0:
                self._fail("add-uid", r, passphrase_error=SealError)

        try:
            await self._call_with_secret("add-uid", Fingerprint(f), work)
        finally:
            self._forget()

    async def import_keys(
        self, armored: str | bytes, *, allow_secret: bool = False
    ) -> list[Fingerprint]:
        """Import keys (or revocations); refuses secret keys unless ``allow_secret``."""
        data = armored.encode("ascii", "replace") if isinstance(armored, str) else armored
        if not allow_secret and b"PRIVATE KEY BLOCK" in data:
            raise InputError("refusing to import secret key material", field="armor")

        def work(g: WatchedGPG) -> list[Fingerprint]:
            r = g.import_keys(data)
            pairs = gpgproc.status(r)
            fprs = [Fingerprint(v.split()[1]) for k, v in pairs if k == "IMPORT_OK"]
            if not fprs and r.n_revoc:  # a revocation certificate: no IMPORT_OK, only this
                fprs = [Fingerprint(v.split()[0]) for k, v in pairs if k == "KEY_CONSIDERED"]
            keywords = {k for k, _ in pairs}
            nothing = not fprs and "NODATA" in keywords  # not OpenPGP data at all
            if "IMPORT_PROBLEM" in keywords or (r.returncode and not fprs and not nothing):
                self._fail("import", r)
            if not fprs:
                raise InputError("no OpenPGP key in the data", field="armor")
            return list(dict.fromkeys(fprs))

        try:
            return await self._call("import", work)
        finally:
            self._forget()

    async def export_public(self, fpr: str) -> str:
        """The armored public key (certificate) of ``fpr``; kept until the keyring changes
        (every send attaches the GP's: a gpg process each time otherwise)."""
        f = fingerprint_arg(fpr)
        self._revalidate()
        if f in self._exports:
            return self._exports[f]
        r = await self._call("export", lambda g: g.run(["--armor", "--export", f]))
        if r.returncode != 0:
            self._fail("export", r, fingerprint=f)
        if not r.data.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"):
            raise NotFoundError("no such public key", fingerprint=f)  # gpg: "nothing exported"
        armored = r.data.decode("ascii")
        self._exports[f] = armored
        return armored

    async def export_secret(self, fpr: str, passphrase: str | None) -> str:
        """The armored secret key, still protected by its passphrase (demo use only)."""
        f = fingerprint_arg(fpr)
        secret = None if passphrase is None else wire(check_passphrase(passphrase))

        def work(g: WatchedGPG) -> str:
            r = g.run(["--armor", "--export-secret-keys", f], passphrase=secret)
            if r.returncode != 0 or not r.data.startswith(armor.SECRET_KEY_ARMOR):
                self._fail("export-secret", r, fingerprint=f)
            return r.data.decode("ascii")

        return await self._call("export-secret", work)

    async def delete(self, fpr: str) -> None:
        """Delete the key (secret and public) with this fingerprint."""
        f = fingerprint_arg(fpr)
        try:
            r = await self._call(
                "delete", lambda g: g.run(["--yes", "--delete-secret-and-public-key", f])
            )
        finally:
            self._forget()
        if await self._lookup(f) is not None:
            self._fail("delete", r, fingerprint=f)

    async def load_keys(self, fprs: Sequence[str]) -> None:
        """List these keys with one gpg call (the per-key checks that follow are cached)."""
        await self._lookup_many([fingerprint_arg(f) for f in fprs])

    async def probe_secret(self, fpr: str) -> KeyInfo | None:
        """List the secret key ``fpr`` with a fresh gpg call, bypassing the cache (the health
        check: gpg answers and holds the key); None when gpg answers but has no such key."""
        f = fingerprint_arg(fpr)
        args = ["--with-fingerprint", "--with-fingerprint", "--list-secret-keys", f]
        r = await self._call("list-secret-keys", lambda g: g.run(args))
        if r.returncode is None:  # gpg did not answer at all (crashed, killed)
            self._fail("list-secret-keys", r)
        found = [i for i in parse_listing(r.data.decode("latin-1")) if i.fingerprint == f]
        if found:
            return found[0]
        missing = [v for k, v in gpgproc.status(r) if k == "ERROR"]
        if r.returncode != 0 and not (missing and all(v.startswith("keylist.") for v in missing)):
            self._fail("list-secret-keys", r)
        return None

    async def _lookup_many(self, fprs: Sequence[Fingerprint]) -> dict[Fingerprint, KeyInfo]:
        self._revalidate()
        now = time.monotonic()
        cached = {f: e for f in fprs if (e := self._cache.get(f))}
        found = {f: e[1] for f, e in cached.items() if now - e[0] < self._cache_seconds}
        wanted = [f for f in dict.fromkeys(fprs) if f not in found]
        if wanted:
            args = ["--with-fingerprint", "--with-fingerprint", "--list-keys", *wanted]
            r = await self._call("list-keys", lambda g: g.run(args))
            missing = [v for k, v in gpgproc.status(r) if k == "ERROR"]
            if r.returncode != 0 and not (
                missing and all(v.startswith("keylist.getkey ") for v in missing)
            ):
                self._fail("list-keys", r)  # anything but "no such key" (a crash: no status)
            for info in parse_listing(r.data.decode("latin-1")):
                if info.fingerprint in wanted:  # a subkey fingerprint never names a key
                    found[info.fingerprint] = info
                    self._cache[info.fingerprint] = (now, info)
        return found

    async def _lookup(self, fpr: Fingerprint) -> KeyInfo | None:
        return (await self._lookup_many([fpr])).get(fpr)

    async def key_info(self, fpr: str) -> KeyInfo:
        """What the key with this (primary) fingerprint is; NotFoundError if absent."""
        f = fingerprint_arg(fpr)
        info = await self._lookup(f)
        if info is None:
            raise NotFoundError("no such key", fingerprint=f)
        return info

    async def check_recipient(
        self, fpr: str, address: str | None, *, now: datetime | None = None
    ) -> KeyInfo:
        """The key, if it may be encrypted to at ``now``; else RecipientKeyError with ``why``.

        ``address``, when given, must be the e-mail address of one of the key's user ids.
        """
        try:
            f = parse_fingerprint(fpr)
        except ValueError:
            raise RecipientKeyError(
                "recipient is not a pinned fingerprint", fingerprint=fpr, why="missing"
            ) from None
        info = await self._lookup(f)
        why = unusable_reason(info, address, now or datetime.now(UTC))
        if why or info is None:
            raise RecipientKeyError(f"recipient key unusable: {why}", fingerprint=f, why=why)
        return info

    async def change_passphrase(self, fpr: str, old: str, new: str) -> None:
        """Change the passphrase of every secret part of the key (gpg --passwd, loopback)."""
        f = fingerprint_arg(fpr)
        lines = f"{check_passphrase(old)}\n{check_passphrase(new)}\n".encode()

        def work(g: WatchedGPG) -> None:
            # --passwd ignores --passphrase-fd; with --command-fd gpg reads the old and the
            # new passphrase as answers to its "passphrase.enter" prompts, in that order.
            r = g.run(["--command-fd", "0", "--passwd", f], data=lines)
            pairs = gpgproc.status(r)
            if ("SUCCESS", "keyedit.passwd") not in pairs or any(k == "ERROR" for k, _ in pairs):
                self._fail("passwd", r, fingerprint=f)  # gpg exits 0 even then

        try:
            await self._call("passwd", work)
        finally:
            self._forget()


def agent_conf(s2k_calibration_ms: int) -> str:
    """The gpg-agent.conf securemail writes: no caching, and this S2K calibration."""
    return (
        AGENT_CONF
        + "# Time gpg-agent spends on the passphrase-to-key derivation of a key it protects\n"
        + "# (GP keys at creation or passphrase change): [gpg] s2k_calibration_ms.\n"
        + f"s2k-calibration {int(s2k_calibration_ms)}\n"
    )


def write_agent_conf(
    homedir: Path, s2k_calibration_ms: int, binary: str = "gpg", *, force: bool = False
) -> bool:
    """Write gpg-agent.conf when it differs (or ``force``), and stop the agent so that it
    reads it again; True when written. Keys already protected keep their S2K count until
    their passphrase is changed."""
    path = homedir / "gpg-agent.conf"
    text = agent_conf(s2k_calibration_ms)
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    if current == text and not force:
        return False
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o600)
    kill_agents(homedir.absolute(), binary)  # reread the conf
    return True


def kill_agents(homedir: Path, binary: str = "gpg") -> None:
    """Stop the gpg-agents of homedir and of its signer homes (best effort)."""
    for home in [homedir, *signers.existing_signer_homes(homedir)]:
        kill_agent(home, binary)


def kill_agent(homedir: Path, binary: str) -> None:
    """Stop the gpg-agent of homedir (best effort, synchronous)."""
    sibling = Path(binary).with_name("gpgconf") if os.sep in binary else None
    gpgconf = str(sibling) if sibling and sibling.exists() else shutil.which("gpgconf")
    if (
        gpgconf is None
        or not (homedir / "pubring.kbx").exists()
        and not any(homedir.glob("S.gpg-agent*"))
    ):
        return
    with suppress(OSError, subprocess.TimeoutExpired):  # best effort
        subprocess.run(
            [gpgconf, "--homedir", str(homedir), "--kill", "gpg-agent"],
            capture_output=True,
            timeout=10,
            check=False,
        )
