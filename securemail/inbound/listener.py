"""The gateway's own SMTP listener for nurses' replies (aiosmtpd, in the app's event loop).

Invariants: nothing is taken before STARTTLS (``require_starttls``: every command but
EHLO/HELO/NOOP/QUIT/STARTTLS is answered 530 until TLS is up); RCPT is refused (550 5.1.1)
for any address but the gateway's reply addresses, so no mail for a third party is ever
relayed or read; DATA is answered only after ``replies.accept`` decided: 250 once the reply
is durably stored, a 5xx (Dutch / English, why) when it is refused and nothing was kept,
451 when the gateway could not decide now, for any reason (a full disk, a store error, gpg
or its agent crashing while decrypting: the sender's server tries again; never aiosmtpd's
own 500, which would drop the reply), with nothing kept. "Not encrypted to our key" (550)
and "gpg failed" (451) are told apart by ``Keyring.decrypt``; a gpg failure is logged at
ERROR and shown by the health check's gpg row. A message over
``[inbound] max_bytes`` is refused with 552 while it is read, before anything is parsed.
No SMTP answer and no log line carries a word of the mail: aiosmtpd's DATA lines (DEBUG)
are never logged, errors are logged by type.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from securemail.config import InboundSettings
from securemail.errors import SecuremailError
from securemail.inbound import replies
from securemail.openpgp.keyring import SealError
from securemail.services import Services

log = logging.getLogger("securemail.inbound")

#: The answer when the gateway cannot decide now; nothing was kept, the sender tries again.
TRY_LATER = (
    "451 4.3.0 Nu niet te verwerken, probeer het later opnieuw / "
    "Cannot take it now, try again later"
)


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class ReplyHandler:
    """aiosmtpd handler: RCPT and DATA decided by the replies module."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        try:
            replies.require_recipient(self.svc, address)
        except replies.ReplyRefusedError as exc:
            return exc.smtp
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        peer = session.peer[0] if isinstance(session.peer, tuple) else ""
        try:
            accepted = await replies.accept(self.svc, raw, peer=peer)
        except replies.ReplyRefusedError as exc:
            log.info("reply refused: %s (%s)", exc.code, exc.reason)
            return exc.smtp
        except SealError as exc:
            # gpg (or its agent) failed on our side: not the sender's fault, and the operator's
            # to fix; the statuses name key ids and error codes, never the mail's content.
            log.error("reply not taken now, gpg failed (ours, temporary): %s", exc.diagnostics())
            return TRY_LATER
        except SecuremailError as exc:
            log.warning("reply not taken now: %s", exc.diagnostics())
            return TRY_LATER
        except Exception as exc:  # a full disk, a broken store: never aiosmtpd's 500
            # A 5xx would make the sender's server drop a reply that may be taken later;
            # the error's text may quote data, so only its type is logged.
            log.error("reply not taken now: %s", type(exc).__name__)
            return TRY_LATER
        return f"250 2.0.0 Antwoord ontvangen bij {accepted.reference} / Reply taken"


async def start(svc: Services, inbound: InboundSettings | None = None) -> asyncio.Server:
    """Listen on [inbound] host:port (or ``inbound``'s) in the running loop; the caller
    closes the server."""
    s = inbound or svc.settings.inbound
    ctx = tls_context(s.certfile, s.keyfile)
    # aiosmtpd logs every line of DATA at DEBUG: a reply sent in the clear (refused, but
    # read) would put the patient in the log. Its commands (INFO) name addresses only.
    logging.getLogger("mail.log").setLevel(max(logging.INFO, logging.getLogger("mail.log").level))
    handler = ReplyHandler(svc)
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SMTP(
            handler,
            data_size_limit=s.max_bytes,
            hostname=svc.settings.gateway.from_address.rpartition("@")[2],
            tls_context=ctx,
            require_starttls=True,
            timeout=60,
            loop=loop,
        )

    server = await loop.create_server(factory, host=s.host, port=s.port)
    log.info("reply listener on %s:%s (STARTTLS required)", s.host, s.port)
    return server
