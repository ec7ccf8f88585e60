"""One clock for people: every moment a page shows is on the region's wall clock
(``deadlines.timezone``, Europe/Amsterdam) and says its zone.

Owns the jinja filter ``local_time`` that all templates use for a stored moment. Invariant:
stored moments are ISO 8601 with an offset or a ``Z`` (UTC); a naive one is read as UTC, the
store's clock, never as the server's local zone. Anything that is not a moment shows as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import jinja2


def parse_moment(text: str) -> datetime | None:
    """A stored moment as an aware datetime, or None for an empty or unreadable value."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def local_time(value: object, zone: str = "Europe/Amsterdam", *, date_only: bool = False) -> str:
    """'03-12-2026 14:05 CET': the moment on the region's clock with its zone abbreviation
    (CET in winter, CEST in summer); '' for nothing, the text itself if it is no moment."""
    if value is None or value == "":
        return ""
    moment = value if isinstance(value, datetime) else parse_moment(str(value))
    if moment is None:
        return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    here = moment.astimezone(ZoneInfo(zone))
    if date_only:
        return here.strftime("%d-%m-%Y")
    return f"{here.strftime('%d-%m-%Y %H:%M')} {here.tzname()}"


def install(env: jinja2.Environment, zone: str) -> None:
    """Register the filters on the app's template environment, bound to the region's zone."""

    def _local(value: object, date_only: bool = False) -> str:
        return local_time(value, zone, date_only=date_only)

    env.filters["local_time"] = _local
