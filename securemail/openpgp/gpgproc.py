"""Run gpg through python-gnupg with a watchdog, and read what gpg said on its status fd.

Invariant: every gpg process starts inside a ``watch()`` in its own process group; when
the watch's deadline passes, or the watch closes with the process still running, the whole
group is killed with SIGKILL and reaped. No gpg (nor a child of a wrapper script) outlives
the call that started it. Starting gpg outside a watch raises.

python-gnupg has no timeout of its own (its reader threads wait for EOF), so we subclass
``gnupg.GPG`` at its one process factory, ``_open_subprocess``.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import gnupg

# gpg error codes (libgpg-error, low 16 bits of the status value).
GPG_ERR_BAD_PASSPHRASE = 11
GPG_ERR_NO_SECKEY = 17
GPG_ERR_CORRUPTED_PROTECTION = 106
GPG_ERR_CANCELED = 99
GPG_ERR_NO_PASSPHRASE = 177
PASSPHRASE_ERRORS = frozenset({GPG_ERR_BAD_PASSPHRASE, GPG_ERR_CANCELED, GPG_ERR_NO_PASSPHRASE})
GPG_ERR_NO_AGENT = 77  # gpg could not reach (or start) gpg-agent
GPG_ERR_AGENT = 78
GPG_ERR_EOF = 16383  # the agent's socket closed mid-operation (a killed agent)
_SYSTEM = 0x8000  # libgpg-error's errno codes: 0x8000 | errno
#: Errors that say gpg-agent went away, not that a key or passphrase is wrong: a killed or
#: crashed agent mid-operation (EOF, a broken or reset socket), none that gpg could start
#: (NO_AGENT), and libassuan's IPC errors (257..281) on the way to it.
AGENT_ERRORS = frozenset(
    {GPG_ERR_NO_AGENT, GPG_ERR_AGENT, GPG_ERR_EOF, *range(257, 282)}
    | {_SYSTEM | errno.EPIPE, _SYSTEM | errno.ECONNRESET, _SYSTEM | errno.ECONNREFUSED}
)

# Status keywords that may appear in an error reason: they carry key ids and error codes,
# never message content.
_REPORTABLE = frozenset(
    {
        "ERROR",
        "FAILURE",
        "INV_RECP",
        "INV_SGNR",
        "KEYEXPIRED",
        "KEYREVOKED",
        "NO_PUBKEY",
        "NO_SECKEY",
        "BAD_PASSPHRASE",
        "MISSING_PASSPHRASE",
        "NODATA",
        "DECRYPTION_FAILED",
        "BADSIG",
        "ERRSIG",
        "EXPSIG",
        "EXPKEYSIG",
        "REVKEYSIG",
        "BADMDC",
        "KEY_NOT_CREATED",
    }
)


class _NoDebugPayload(logging.Filter):
    """python-gnupg logs the first bytes of verified data at DEBUG (verify_data); drop DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("gnupg").addFilter(_NoDebugPayload())

_current = threading.local()


class Watch:
    """A deadline for the gpg processes started by one call on one thread."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.append(proc)
            expired = self.expired
        if expired:
            _kill_group(proc)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            procs = list(self._procs)
        for proc in procs:
            _kill_group(proc)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _kill_group(proc)
            with suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored
                proc.wait(timeout=5)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # Only while the leader is unreaped is its pid (= process group id) surely ours.
    if proc.poll() is None:
        with suppress(ProcessLookupError):  # exited between poll and kill
            os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def watch(seconds: float) -> Iterator[Watch]:
    """Run the gpg calls of the block on this thread under one deadline."""
    w = Watch(seconds)
    _current.watch = w
    try:
        yield w
    finally:
        _current.watch = None
        w.close()


class WatchedGPG(gnupg.GPG):  # type: ignore[misc]  # python-gnupg ships no types
    """gnupg.GPG whose processes are watched; plus ``run()`` for commands it lacks."""

    def _open_subprocess(self, args, passphrase=False):  # type: ignore[no-untyped-def]
        w = getattr(_current, "watch", None)
        if w is None:
            raise RuntimeError("gpg started outside a watchdog")
        cmd = self.make_args(args, passphrase)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            start_new_session=True,  # own process group, so the watchdog can kill it whole
        )
        w.add(proc)
        return proc

    def run(self, args: list[str], data: bytes = b"", passphrase: str | None = None) -> Result:
        """Run gpg with ``args``, ``data`` on stdin (after the passphrase line, if any)."""
        result = Result(self)
        self._handle_io(args, io.BytesIO(data), result, passphrase=passphrase, binary=True)
        return result


class Result(gnupg.StatusHandler):  # type: ignore[misc]  # python-gnupg ships no types
    """A result that only keeps stdout, stderr and return code; read statuses with status()."""

    returncode: int | None = None
    data: bytes = b""
    stderr: str = ""

    def handle_status(self, key: str, value: str) -> None:
        pass


def status(result: object) -> list[tuple[str, str]]:
    """The (KEYWORD, value) pairs gpg wrote on its status fd, in order."""
    pairs = []
    for line in (getattr(result, "stderr", "") or "").splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, _, value = line[9:].partition(" ")
            pairs.append((keyword, value.strip()))
    return pairs


def error_codes(pairs: list[tuple[str, str]]) -> set[int]:
    """gpg error codes from ERROR/FAILURE lines ("FAILURE sign 67108875" -> 11)."""
    codes = set()
    for keyword, value in pairs:
        if keyword in ("ERROR", "FAILURE"):
            last = value.rsplit(" ", 1)[-1]
            if last.isdigit():
                codes.add(int(last) & 0xFFFF)
    return codes


def is_bad_passphrase(pairs: list[tuple[str, str]]) -> bool:
    keywords = {k for k, _ in pairs}
    return bool(keywords & {"BAD_PASSPHRASE", "MISSING_PASSPHRASE"}) or bool(
        error_codes(pairs) & PASSPHRASE_ERRORS
    )


def is_agent_failure(pairs: list[tuple[str, str]]) -> bool:
    """gpg failed because its gpg-agent was gone (killed, crashed, not startable)."""
    return bool(error_codes(pairs) & AGENT_ERRORS)


def summary(result: object) -> str:
    """The reportable status lines and the exit code: safe for reasons and logs."""
    parts = [f"{k} {v}".strip() for k, v in status(result) if k in _REPORTABLE]
    parts.append(f"exit {getattr(result, 'returncode', None)}")
    return "; ".join(parts)


def wire(text: str) -> str:
    """``text`` as python-gnupg will write it: it encodes with Latin-1, gpg wants UTF-8 bytes."""
    return text.encode("utf-8").decode("latin-1")
