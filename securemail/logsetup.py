"""Logging set-up: readable text lines or one JSON object per line (``[gateway] log_format``).

Invariant: the formatter writes only fixed fields - time, level, logger, message, and the
incident id and request id when known - plus the exception's type (never its text or a
traceback in JSON: a traceback can carry local values). What goes into a message is the
caller's promise (ids, never patient data: docs/threat-model.md #9); the test in
tests/e2e/test_json_logs.py holds it for a whole send and failure path.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

#: The id of the HTTP request being served (set by the web app's request-id middleware).
request_id: ContextVar[str] = ContextVar("securemail_request_id", default="")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
_MARK = "securemail_handler"  # set on the handler configure() installs


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        incident = getattr(record, "incident", None)
        if incident:
            out["incident"] = str(incident)
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            out["request_id"] = rid
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = record.exc_info[0].__name__
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """The readable line, with the request id appended when there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id.get()
        return f"{line} [request {rid}]" if rid and "\n" not in line else line


def configure(
    log_format: str = "text",
    *,
    verbose: bool = False,
    stream: IO[str] | None = None,
    force: bool = False,
) -> logging.Handler | None:
    """Install one stream handler in the given format on the root logger, replacing the one
    installed before. Like logging.basicConfig, it leaves logging alone (returns None) when
    someone else already configured a handler (a test runner, an embedding program), unless
    ``force``."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}")
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _MARK, False)]
    if len(ours) < len(root.handlers) and not force:
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    setattr(handler, _MARK, True)
    for old in ours:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler
