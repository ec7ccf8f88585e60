"""The error hierarchy shared by every module.

Every refusal is a SecuremailError with a stable dotted ``code`` (used in audit
rows, the API, the CLI and docs/errors.md), an English ``reason`` for logs and
the CLI, and a Dutch ``nl`` text for people in the web UI. Reasons and context
carry ids (reference, fingerprint, sequence number), never patient data.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SecuremailError(Exception):
    """Base of every expected failure; anything else is a bug and gets an incident id."""

    code: ClassVar[str] = "error"
    nl: ClassVar[str] = "Er ging iets mis. Probeer het opnieuw of neem contact op met de beheerder."
    http_status: ClassVar[int] = 400
    #: Seconds for a Retry-After header (0: none); for refusals that pass by themselves.
    retry_after: ClassVar[int] = 0

    def __init__(self, reason: str, /, **context: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.context = context

    def diagnostics(self) -> str:
        """One line a person can act on: code, reason and the ids that locate the problem."""
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.context.items()) if v is not None)
        return f"{self.code}: {self.reason}" + (f" ({extra})" if extra else "")

    def message_nl(self) -> str:
        """The Dutch text for the UI; subclasses may interpolate context."""
        try:
            return self.nl.format(**self.context)
        except (KeyError, IndexError, ValueError):
            return self.nl

    def as_json(self) -> dict[str, Any]:
        return {
            "error": self.code,
            "reason": self.reason,
            "message_nl": self.message_nl(),
            "context": {k: v for k, v in self.context.items() if v is not None},
        }


class ConfigError(SecuremailError):
    code = "config.invalid"
    nl = "De configuratie van de gateway is ongeldig: {setting}."


class NotInitialisedError(SecuremailError):
    code = "home.not_initialised"
    nl = "Deze gateway is nog niet ingericht (securemail init)."


class NotFoundError(SecuremailError):
    code = "not_found"
    nl = "Niet gevonden."
    http_status = 404


class AccessDeniedError(SecuremailError):
    code = "access.denied"
    nl = "U heeft geen toegang tot deze gegevens of handeling."
    http_status = 403


class InputError(SecuremailError):
    """Bad input outside the form (CLI arguments, directory entries)."""

    code = "input.invalid"
    nl = "Ongeldige invoer: {field}."


class UnreadableInputError(InputError):
    """A request body the gateway will not read: wrong charset, broken encoding, too many
    fields, JSON nested too deep (securemail.web.inputs)."""

    code = "input.unreadable"
    nl = (
        "De verzonden gegevens konden niet worden gelezen (tekenset, vorm of omvang). "
        "Laad de pagina opnieuw en probeer het nog eens."
    )


class ConflictError(SecuremailError):
    code = "conflict"
    nl = "Dit bestaat al of is intussen gewijzigd."
    http_status = 409


class ServiceUnavailableError(SecuremailError):
    """Sending is switched off because a startup check failed (SecureDrop's 503)."""

    code = "service.unavailable"
    nl = "Verzenden is tijdelijk uitgeschakeld: {why}. De beheerder is op de hoogte."
    http_status = 503


class StorageFullError(SecuremailError):
    """The database cannot be written (disk full): nothing was stored; try again later."""

    code = "storage.full"
    nl = (
        "De gateway kan op dit moment niets opslaan (de schijf is vol); uw verzoek is niet "
        "verstuurd en niet bewaard. Probeer het over enkele minuten opnieuw. De beheerder is "
        "gewaarschuwd."
    )
    http_status = 503
    retry_after = 120
