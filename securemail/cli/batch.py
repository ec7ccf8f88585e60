"""Batch sending for practice systems: ``securemail request send --batch FILE`` (or ``-``).

Owns reading an NDJSON batch within its bounds and answering every request line exactly once.
One JSON object per line: the request itself (as ``--file`` takes it), or an envelope
``{"request": {...}, "to": "...", "idempotency_key": "..."}``. The GP's passphrase is read
once per batch; every request still gets its own signature (one S2K each).

Invariants:
- each line is its own transaction: ``exchange.send`` validates, checks consent, seals and
  stores one request, durable when it returns or not stored at all, so a bad line leaves
  nothing half-written and never undoes the lines before or after it;
- bounded: at most ``[gateway] batch_max_lines`` lines of at most ``batch_max_line_kb`` KiB
  are read; the first line past either bound is answered with an error and nothing after it
  is read (the bytes read are at most lines x line size, whatever the input holds);
- at most as many requests are open at once as the keyring has signing homes (plus one to
  overlap validation with signing), so memory does not grow with the batch;
- one result line per non-empty input line on stdout, in input order, each naming its line
  number: ``{"line": N, "reference": ...}`` or ``{"line": N, "error": code, "field": ...,
  "message": English}``. Messages name fields and codes, never the values in them;
- a refused passphrase stops the batch: the lines after it are answered "not sent" without
  another try (no lock-out of the GP by a batch of guesses).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from securemail.access import Actor
from securemail.errors import InputError, SecuremailError
from securemail.exchange import send as exchange
from securemail.form.request import FormInvalidError
from securemail.services import Services

#: Envelope keys a batch line may carry next to its request.
ENVELOPE_KEYS = frozenset({"request", "to", "idempotency_key"})
#: Error codes after which no further line is tried: the passphrase is the batch's.
STOPPING_CODES = frozenset({"seal.bad_passphrase", "seal.passphrase_throttled"})


@dataclass(frozen=True, slots=True)
class Line:
    """One input line: its number and either a parsed request or why it has none."""

    number: int
    request: dict[str, Any] | None = None
    to: str | None = None
    idempotency_key: str | None = None
    error: dict[str, Any] | None = None
    last: bool = False  # a bound was hit here: nothing after this line is read


@dataclass
class Summary:
    sent: int = 0
    refused: list[int] = field(default_factory=list)


def line_error(number: int, code: str, message: str, field_name: str = "") -> dict[str, Any]:
    """A result line for a refused input line (English, naming line and field)."""
    where = f"line {number}" + (f", field {field_name}" if field_name else "")
    out: dict[str, Any] = {"line": number, "error": code, "message": f"{where}: {message}"}
    if field_name:
        out["field"] = field_name
    return out


def read_lines(stream: IO[bytes], max_lines: int, max_line_bytes: int) -> Iterator[Line]:
    """The batch's lines, parsed, reading no more than the bounds allow."""
    number = 0
    while True:
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            yield Line(number, error=_too_long(number, max_line_bytes), last=True)
            return
        if not raw.strip():
            continue  # an empty line is no request (and gets no result line)
        if number > max_lines:
            msg = f"the batch has more than {max_lines} lines; nothing from here on was read"
            yield Line(number, error=line_error(number, "batch.too_many_lines", msg), last=True)
            return
        yield parse_line(number, raw)


def _too_long(number: int, max_line_bytes: int) -> dict[str, Any]:
    msg = (
        f"longer than {max_line_bytes // 1024} KiB ([gateway] batch_max_line_kb); "
        "nothing from here on was read"
    )
    return line_error(number, "batch.line_too_long", msg)


def parse_line(number: int, raw: bytes) -> Line:
    """One line's JSON as a request (bare or in an envelope), or its error."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Line(number, error=line_error(number, "input.invalid", "not UTF-8"))
    except json.JSONDecodeError as exc:
        msg = f"not valid JSON (column {exc.colno}: {exc.msg})"
        return Line(number, error=line_error(number, "input.invalid", msg))
    if not isinstance(data, dict):
        return Line(number, error=line_error(number, "input.invalid", "not a JSON object"))
    if "passphrase" in data:
        msg = "a batch never carries the passphrase; it is asked once for the whole batch"
        return Line(number, error=line_error(number, "input.invalid", msg, "passphrase"))
    if "request" not in data:
        return Line(number, request=data)
    return _envelope(number, data)


def _envelope(number: int, data: dict[str, Any]) -> Line:
    for key in sorted(data):
        if key not in ENVELOPE_KEYS:
            msg = f"unknown key; an envelope has {', '.join(sorted(ENVELOPE_KEYS))}"
            return Line(number, error=line_error(number, "input.invalid", msg, key))
    if not isinstance(data["request"], dict):
        msg = "must be a JSON object"
        return Line(number, error=line_error(number, "input.invalid", msg, "request"))
    for key in ("to", "idempotency_key"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return Line(number, error=line_error(number, "input.invalid", "must be text", key))
    return Line(number, data["request"], data.get("to"), data.get("idempotency_key"))


def refusal(number: int, exc: SecuremailError) -> dict[str, Any]:
    """The result line for a request the gateway refused."""
    if isinstance(exc, FormInvalidError) and exc.errors:
        first = exc.errors[0]
        out = line_error(number, exc.code, first.message_en, first.field)
        if len(exc.errors) > 1:
            out["message"] += f" (and {len(exc.errors) - 1} more)"
        out["fields"] = [{"field": e.field, "code": e.code} for e in exc.errors]
        return out
    name = exc.context.get("field")
    return line_error(number, exc.code, exc.reason, name if isinstance(name, str) else "")


class Batch:
    """Sends the lines of one batch for one GP, a window at a time, answering in order."""

    def __init__(
        self,
        svc: Services,
        actor: Actor,
        passphrase: str,
        *,
        to: str | None,
        out: IO[str],
    ) -> None:
        self.svc = svc
        self.actor = actor
        self.passphrase = passphrase
        self.to = to
        self.out = out
        self.window = asyncio.Semaphore(svc.keyring.signer_count + 1)
        self.stopped: str | None = None  # why no further line is tried
        # Until one signature has taken the passphrase, lines go one at a time: a mistyped
        # passphrase costs one refused try, not one per line in the window.
        self.confirmed = False
        self.probe = asyncio.Lock()
        self.summary = Summary()

    async def run(self, lines: Iterator[Line]) -> Summary:
        pending: list[asyncio.Task[dict[str, Any]]] = []
        while True:
            await self.window.acquire()
            # read in a thread: a practice system's pipe may be slow, the loop may not wait
            line = await asyncio.to_thread(next, lines, None)
            if line is None:
                self.window.release()
                break
            pending.append(asyncio.create_task(self._one(line)))
            self._flush_done(pending)
        for task in pending:
            self._emit(await task)
        return self.summary

    def _flush_done(self, pending: list[asyncio.Task[dict[str, Any]]]) -> None:
        """Print the finished results at the head of the queue (input order)."""
        while pending and pending[0].done():
            self._emit(pending.pop(0).result())

    def _emit(self, result: dict[str, Any]) -> None:
        if "error" in result:
            self.summary.refused.append(int(result["line"]))
        else:
            self.summary.sent += 1
        self.out.write(json.dumps(result, ensure_ascii=False) + "\n")
        self.out.flush()

    async def _one(self, line: Line) -> dict[str, Any]:
        try:
            return await self._send(line)
        finally:
            self.window.release()

    async def _send(self, line: Line) -> dict[str, Any]:
        if line.error is not None:
            return line.error
        if not self.confirmed:
            async with self.probe:
                if not self.confirmed:
                    return await self._call(line)
        return await self._call(line)

    async def _call(self, line: Line) -> dict[str, Any]:
        if self.stopped:
            return line_error(line.number, "batch.not_sent", self.stopped)
        try:
            result = await exchange.send(
                self.svc,
                self.actor,
                line.request or {},  # a line without error has its request
                self.passphrase,
                to=line.to or self.to,
                idempotency_key=line.idempotency_key,
            )
        except SecuremailError as exc:
            if exc.code in STOPPING_CODES and not self.stopped:
                self.stopped = f"not sent: the passphrase was refused at line {line.number}"
            return refusal(line.number, exc)
        self.confirmed = True
        out: dict[str, Any] = {"line": line.number, "reference": result.reference}
        if result.skipped:
            out["skipped"] = [
                {"name": s["name"], "why": s["why"], "fingerprint": s["fingerprint"]}
                for s in result.skipped
            ]
        return out


def open_input(path: str) -> IO[bytes]:
    """The batch's byte stream: a file, or stdin for ``-``."""
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # closed by the caller
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", field="--batch") from None
