"""The relay (smarthost) connection and the outcome of one delivery attempt.

Invariant: no envelope command (MAIL, RCPT, DATA) and no AUTH is ever sent before
TLS is up with a verified certificate. ``starttls = "required"`` always passes
``start_tls=True`` - aiosmtplib's default (``None``) would silently continue in
plaintext when a server does not offer STARTTLS - and ``"implicit"`` passes
``use_tls=True``; both with ``validate_certs=True`` and our own ``tls_context``.
After connecting we check again that the transport really is TLS.

Outcomes (docs/delivery.md): 2xx sent; 4xx, connection errors, timeouts and TLS
failures transient; 5xx to MAIL/RCPT/DATA permanent. A 5xx in the session set-up
(greeting, EHLO, STARTTLS, AUTH) says something about our configuration or the
relay, not about the message, so it is transient too: fixing the password must
not require re-sending every request of the day.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import weakref
from dataclasses import dataclass
from typing import Literal

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings  # the count SIZE must use

from securemail.config import Settings
from securemail.errors import ConfigError, SecuremailError

#: session: greeting, EHLO, STARTTLS, AUTH; message: MAIL, RCPT; data: from DATA until the
#: relay's final answer (a message lost here may have been delivered).
Phase = Literal["session", "message", "data"]


class RelayInsecureError(SecuremailError):
    """The connection came up without TLS (should be impossible; checked anyway)."""

    code = "smtp.insecure"
    nl = "De verbinding met de mailserver was niet versleuteld; er is niets verzonden."


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to. reason is short English with ids only, no patient data;
    why is the stable code of a final non-success ("smtp.rejected", "consent.withdrawn")."""

    kind: Literal["sent", "transient", "uncertain", "permanent", "stopped"]
    code: int | None
    reason: str
    keep_connection: bool = False
    why: str = ""

    @property
    def detail(self) -> str:
        return f"{self.code} {self.reason}" if self.code else self.reason


_SEMAPHORES: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]
] = weakref.WeakKeyDictionary()


def destination_semaphore(settings: Settings) -> asyncio.Semaphore:
    """One semaphore per relay (host, port) per event loop, shared by every Worker in it."""
    per_loop = _SEMAPHORES.setdefault(asyncio.get_running_loop(), {})
    key = (settings.smtp.host, settings.smtp.port)
    if key not in per_loop:
        per_loop[key] = asyncio.Semaphore(settings.smtp.max_connections)
    return per_loop[key]


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Wait seconds, or less when stop is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verify the relay against cafile (or the system store), TLS 1.2 at least."""
    try:
        ctx = ssl.create_default_context(cafile=settings.smtp.cafile or None)
    except (OSError, ssl.SSLError):
        raise ConfigError(
            "[smtp] cafile cannot be read as a CA bundle", setting="[smtp] cafile"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def connect(settings: Settings, ctx: ssl.SSLContext) -> aiosmtplib.SMTP:
    """Open one TLS-protected (and, if configured, authenticated) session with the relay."""
    s = settings.smtp
    implicit = s.starttls == "implicit"
    smtp = aiosmtplib.SMTP(
        hostname=s.host,
        port=s.port,
        timeout=s.timeout_seconds,
        use_tls=implicit,
        start_tls=not implicit,  # never None: see the module docstring
        validate_certs=True,
        tls_context=ctx,
        # aiosmtplib logs in after STARTTLS, inside connect(); only with TLS up.
        username=s.username or None,
        password=(s.password or None) if s.username else None,
    )
    try:
        await smtp.connect()
    except BaseException:
        # A refusal mid-handshake (no STARTTLS, a bad certificate, our timeout) must not leave
        # the socket open until garbage collection.
        discard(smtp)
        raise
    if smtp.get_transport_info("sslcontext") is None:  # defence in depth
        discard(smtp)
        raise RelayInsecureError("relay session is not TLS-protected", host=s.host, port=s.port)
    return smtp


def discard(smtp: aiosmtplib.SMTP) -> None:
    """Drop a session at once, socket included.

    ``SMTP.close()`` alone closes a TLS transport gracefully: the socket stays open until the
    relay answers the TLS close_notify, so an event loop that ends first (a worker stopping, a
    CLI command returning) leaves it to the garbage collector. Nothing more is said on a
    session we drop, so abort it.
    """
    transport = smtp.transport
    if isinstance(transport, asyncio.WriteTransport):  # a TLS or TCP transport: abort()
        transport.abort()
    smtp.close()


async def goodbye(smtp: aiosmtplib.SMTP) -> None:
    """End a session well: QUIT, then drop the socket at once, as ``discard`` does.

    After the relay's 221 nothing more is said; aiosmtplib's graceful close would again
    leave the socket waiting for the relay's TLS close_notify. Timeouts are the caller's.
    """
    transport = smtp.transport
    try:
        await smtp.quit()
    finally:
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        smtp.close()


def size_option(smtp: aiosmtplib.SMTP, mime: bytes) -> list[str]:
    """RFC 1870 SIZE for MAIL FROM when the relay offers it (as aiosmtplib's sendmail does):
    an oversize message is refused before its bytes go out."""
    if not smtp.supports_extension("size"):
        return []
    return [f"size={len(normalize_message_line_endings(mime))}"]


async def reset_quietly(smtp: aiosmtplib.SMTP, timeout: float) -> None:
    """RSET after a refused MAIL or RCPT, so the next message can use the session (what
    aiosmtplib's sendmail does); a relay that does not answer is dropped by the caller."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await smtp.rset()


def one_line(text: object, limit: int = 160) -> str:
    return " ".join(str(text).split())[:limit]


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def classify(exc: BaseException, phase: Phase) -> Outcome:
    """Map an exception from connect() (phase "session") or sendmail() ("message")."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code = int(exc.code)
        if 200 <= code < 300:
            return Outcome("sent", code, one_line(exc.message))
        permanent = phase != "session" and 500 <= code < 600
        where = "session set-up: " if phase == "session" else ""
        return Outcome(
            "permanent" if permanent else "transient",
            code,
            where + one_line(exc.message),
            keep_connection=phase != "session",
            why="smtp.rejected" if permanent else "",
        )
    if phase == "data" and isinstance(
        exc,
        aiosmtplib.SMTPTimeoutError | TimeoutError | aiosmtplib.SMTPServerDisconnected | OSError,
    ):
        # The message went out and no answer came back: the relay may have queued it. Sent
        # again (same bytes, same Message-ID), recorded as such (docs/delivery.md).
        return Outcome(
            "uncertain",
            None,
            f"may have been delivered: no answer after DATA ({type(exc).__name__})",
        )
    tls = _tls_cause(exc)
    if tls is not None:
        why = getattr(tls, "verify_message", "") or getattr(tls, "reason", "") or type(tls).__name__
        return Outcome("transient", None, f"TLS failure: {one_line(why)}")
    if isinstance(exc, RelayInsecureError):
        return Outcome("transient", None, "TLS failure: session without TLS refused")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return Outcome("transient", None, f"timeout talking to relay ({phase})")
    if isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in exc.message.upper():
        return Outcome(
            "transient", None, "TLS failure: relay does not offer STARTTLS; nothing sent in clear"
        )
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return Outcome("transient", None, "relay closed the connection")
    if isinstance(exc, OSError | aiosmtplib.SMTPException):
        return Outcome("transient", None, f"connection to relay failed: {type(exc).__name__}")
    # Anything else is a bug or an unexpected library error: retry, name only the type.
    return Outcome("transient", None, f"unexpected error: {type(exc).__name__}")
