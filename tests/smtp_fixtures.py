"""Real relays and real sealed messages for the outbox tests (a pytest plugin).

- ``tls_ca`` / ``relay_cafile``: a trustme CA and its PEM file; ``untrusted_ca`` is
  another CA the gateway does not trust.
- ``relay_factory(mode, start=True, port=None)``: an aiosmtpd relay on 127.0.0.1.
  mode "starttls" (``require_starttls=True``), "plain" (no STARTTLS offered),
  "untrusted" (STARTTLS with a certificate from ``untrusted_ca``) or "implicit" (TLS
  from the first byte). A relay can be created down and started later on the same
  port, stopped and started again. Each records every DATA it answered (envelope,
  bytes, Message-ID, reply) and every byte it read from clients (``received``, after
  TLS decryption), and counts concurrent client sessions.
- ``smtp_server``, ``plain_smtp_server``, ``untrusted_smtp_server``: started relays.
- ``outbox_pgp``: a throwaway ed25519/cv25519 team key (gpg CLI, once per session),
  the ciphertext of ``MARKER`` and a ``decrypt`` that reads as the team would.
- ``make_sealed_for_tests``: wraps real gpg output in an RFC 3156 envelope and builds
  a SealedMessage with openpgp's private token. Only tests may do this; the lead swaps
  it for ``openpgp.seal`` once that is merged.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.encoders import encode_7or8bit
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from securemail.openpgp.keyring import _SEAL_TOKEN, Fingerprint, SealedMessage

#: Stands in for patient data: a name, a (test) BSN and a date of birth.
MARKER = "Jansen 123456782 1950-01-01"
TEAM_ADDRESS = "wijkteam-oost@zorg.test"
GATEWAY_ADDRESS = "gateway@securemail.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the recording relay ----------------------------------------------------------------------
@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    message_id: str
    reply: str

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("250")


class RecordingHandler:
    """Answers DATA with ``reply`` (or the next of ``replies``) after ``delay`` seconds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reply = "250 2.0.0 Ok: queued"
        self.replies: collections.deque[str] = collections.deque()
        self.delay = 0.0
        self.received: list[Received] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        content = envelope.original_content or b""
        with self.lock:
            reply = self.replies.popleft() if self.replies else self.reply
            mid = str(message_from_bytes(content, policy=policy.default).get("Message-ID", ""))
            self.received.append(
                Received(envelope.mail_from, tuple(envelope.rcpt_tos), content, mid, reply)
            )
        return reply

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def accepted_ids(self) -> collections.Counter[str]:
        """How often the relay answered 250 per Message-ID (the transport's view)."""
        return collections.Counter(r.message_id for r in self.snapshot() if r.accepted)

    def mailbox(self) -> dict[str, bytes]:
        """What a receiving MTA or mail client keeps: one message per Message-ID."""
        box: dict[str, bytes] = {}
        for r in self.snapshot():
            if r.accepted:
                box.setdefault(r.message_id, r.content)
        return box


class Relay:
    """One aiosmtpd relay on 127.0.0.1:port that can be down, up, down, up."""

    def __init__(self, mode: str, port: int, tls_ctx: ssl.SSLContext | None) -> None:
        self.mode, self.port, self.tls_ctx = mode, port, tls_ctx
        self.handler = RecordingHandler()
        self.lock = threading.Lock()
        self.received = bytearray()  # every byte read from clients (after TLS decryption)
        self.sessions = 0  # client sessions that sent at least one byte
        self.active = 0
        self.max_active = 0
        self.controller: Controller | None = None

    def start(self) -> Relay:
        kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": self.port}
        if self.mode in ("starttls", "untrusted"):
            kwargs.update(tls_context=self.tls_ctx, require_starttls=True)
        elif self.mode == "implicit":
            kwargs.update(ssl_context=self.tls_ctx)
        self.controller = _RecordingController(self, self.handler, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        # Let client sessions end first: Controller.stop() does not close live transports,
        # which would then be reported as unclosed (ResourceWarning) in a later test.
        deadline = time.monotonic() + 2.0
        while self.active > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def _session_started(self) -> None:
        with self.lock:
            self.sessions += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def _session_ended(self) -> None:
        with self.lock:
            self.active -= 1


class _RecordingSMTP(SMTP):
    def __init__(self, relay: Relay, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._relay = relay
        self._counted = False

    def data_received(self, data: bytes) -> None:
        with self._relay.lock:
            self._relay.received += data
        if not self._counted:  # the controller's start-up probe never sends a byte
            self._counted = True
            self._relay._session_started()
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._relay._session_ended()
        super().connection_lost(error)


class _RecordingController(Controller):
    def __init__(self, relay: Relay, *args: Any, **kwargs: Any) -> None:
        self._relay = relay
        super().__init__(*args, **kwargs)

    def factory(self) -> SMTP:
        return _RecordingSMTP(self._relay, self.handler, **self.SMTP_kwargs)


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def untrusted_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def relay_cafile(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("relay-ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return str(path)


def _server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
def relay_factory(tls_ca: trustme.CA, untrusted_ca: trustme.CA) -> Iterator[Any]:
    relays: list[Relay] = []

    def make(mode: str = "starttls", *, start: bool = True, port: int | None = None) -> Relay:
        ctx = (
            None
            if mode == "plain"
            else _server_ctx(untrusted_ca if mode == "untrusted" else tls_ca)
        )
        relay = Relay(mode, port or free_port(), ctx)
        relays.append(relay)
        return relay.start() if start else relay

    yield make
    for relay in relays:
        relay.stop()


@pytest.fixture
def smtp_server(relay_factory: Any) -> Relay:
    return relay_factory("starttls")


@pytest.fixture
def plain_smtp_server(relay_factory: Any) -> Relay:
    return relay_factory("plain")


@pytest.fixture
def untrusted_smtp_server(relay_factory: Any) -> Relay:
    return relay_factory("untrusted")


# -- real OpenPGP output -----------------------------------------------------------------------
@dataclass(frozen=True)
class PgpForTests:
    homedir: Path
    fingerprint: str
    armor: str  # MARKER encrypted to the team key

    def gpg(self, *args: str, stdin: bytes = b"") -> bytes:
        cmd = [
            "gpg",
            "--homedir",
            str(self.homedir),
            "--batch",
            "--yes",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            *args,
        ]
        return subprocess.run(cmd, input=stdin, capture_output=True, check=True).stdout

    def decrypt(self, armored: bytes) -> bytes:
        """Read as the team would: gpg --decrypt with the team's secret key."""
        return self.gpg("--decrypt", stdin=armored)


@pytest.fixture(scope="session")
def outbox_pgp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgpForTests]:
    if shutil.which("gpg") is None:
        pytest.skip("gpg is not installed")
    home = tmp_path_factory.mktemp("gpg")
    home.chmod(0o700)
    pgp = PgpForTests(home, "", "")
    pgp.gpg(
        "--quick-gen-key", "Wijkteam Oost (test) <wijkteam-oost@zorg.test>", "ed25519", "sign", "1d"
    )
    colons = pgp.gpg("--list-keys", "--with-colons").decode()
    fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    pgp.gpg("--quick-add-key", fpr, "cv25519", "encr", "1d")
    armor = pgp.gpg(
        "--trust-model", "always", "--armor", "--encrypt", "-r", fpr, stdin=MARKER.encode()
    )
    yield PgpForTests(home, fpr, armor.decode("ascii"))
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def pgp_mime(armor: str, *, message_id: str, sender: str, recipient: str) -> bytes:
    """An RFC 3156 envelope around armor, with a neutral subject."""
    msg = MIMEMultipart("encrypted", protocol="application/pgp-encrypted")
    control = MIMEApplication("Version: 1\n", "pgp-encrypted", _encoder=encode_7or8bit)
    control["Content-Description"] = "PGP/MIME version identification"
    data = MIMEApplication(armor, "octet-stream", _encoder=encode_7or8bit)
    data["Content-Description"] = "OpenPGP encrypted message"
    data["Content-Disposition"] = 'inline; filename="encrypted.asc"'
    msg.attach(control)
    msg.attach(data)
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = "securemail: beveiligd bericht"
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id
    return msg.as_bytes()


def make_sealed_for_tests(
    pgp: PgpForTests,
    *,
    reference: str = "UVZ-2026-000123",
    mime: bytes | None = None,
    message_id: str | None = None,
    recipient: str = TEAM_ADDRESS,
) -> SealedMessage:
    """A SealedMessage around real gpg output, made with openpgp's private token.

    TESTS ONLY: production code gets SealedMessages from openpgp.seal() alone.
    """
    message_id = message_id or make_msgid(idstring="uvz", domain="securemail.test")
    if mime is None:
        mime = pgp_mime(
            pgp.armor, message_id=message_id, sender=GATEWAY_ADDRESS, recipient=recipient
        )
    return SealedMessage(
        mime=mime,
        message_id=message_id,
        sender=GATEWAY_ADDRESS,
        recipient=recipient,
        reference=reference,
        recipient_fingerprints=(Fingerprint(pgp.fingerprint),),
        signer_fingerprint=Fingerprint(pgp.fingerprint),
        _token=_SEAL_TOKEN,
    )
