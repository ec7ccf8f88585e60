"""Fewer repeats: the window from the relay's 250 to the committed "sent", and how many
messages go out twice after SIGKILLs of the delivery worker mid-burst.

    PYTHONPATH=. python -m benchmarks repeats [--quick]

A home with N accepted messages in its outbox (real gpg output in PGP/MIME, one row and one
audit row per message through the outbox's own enqueue), a recording STARTTLS relay on
127.0.0.1 that counts each Message-ID it answers 250 to (5 ms per message, so that a kill
lands mid-delivery).

1. Window: an in-process ``Worker`` delivers the burst; ``Worker.on_commit_window`` gives
   the seconds from each 250 to its committed "sent" (p50/p99). Only in that window can a
   crash make a repeat.
2. Repeats: a worker *process* (``run_worker_process``, as ``securemail worker`` runs)
   delivers a second burst of N and is SIGKILLed 5 times, each at a random moment (a
   random time, seed reported, after the worker has started delivering again), and
   restarted at once. Counted: Message-IDs the relay got more than once (and the rows
   claimed, "sending", at each kill). Target: a repeat only of a message in flight, so at
   most one per connection per kill.

Counts and ratios, never a timing assertion (tests/delivery/test_worker_leases.py holds
the promise itself: every message delivered, a repeat only of an in-flight one).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller

import securemail
from benchmarks._gateway import percentile
from securemail.delivery.worker import Worker
from securemail.home import open_store
from securemail.store import Store
from tests.delivery.helpers import enqueue_with_audit
from tests.smtp_fixtures import GATEWAY_ADDRESS, PgpForTests, make_sealed_for_tests

TITLE = "Fewer repeats: 250-to-commit window, repeats after SIGKILLs of the worker"
KILLS = 5
CONNECTIONS = 2  # [smtp] max_connections: at most one message in flight on each
RELAY_DELAY = 0.005


class IdCounter:
    """A relay that answers 250 to every DATA and counts the Message-IDs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: collections.Counter[str] = collections.Counter()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(RELAY_DELAY)
        msg = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        with self.lock:
            self.ids[str(msg.get("Message-ID", ""))] += 1
        return "250 2.0.0 Ok: queued"

    def total(self) -> int:
        with self.lock:
            return sum(self.ids.values())


def _relay(workdir: Path) -> tuple[Controller, IdCounter, int, str]:
    ca = trustme.CA()
    cafile = workdir / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    handler = IdCounter()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True
    )
    controller.start()
    return controller, handler, port, str(cafile)


def _pgp(workdir: Path) -> PgpForTests:
    home = workdir / "team"
    home.mkdir(mode=0o700)
    pgp = PgpForTests(home, "", "")
    pgp.gpg("--quick-gen-key", "Wijkteam (bench) <wijkteam@zorg.test>", "ed25519", "sign", "1d")
    colons = pgp.gpg("--list-keys", "--with-colons").decode()
    fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    pgp.gpg("--quick-add-key", fpr, "cv25519", "encr", "1d")
    armor = pgp.gpg("--trust-model", "always", "--armor", "--encrypt", "-r", fpr, stdin=b"x")
    return PgpForTests(home, fpr, armor.decode("ascii"))


def _home(workdir: Path, name: str, port: int, cafile: str) -> Path:
    home = workdir / name
    home.mkdir()
    (home / "securemail.toml").write_text(
        f'[gateway]\nfrom_address = "{GATEWAY_ADDRESS}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\ncafile = "{cafile}"\n'
        "timeout_seconds = 2.0\n"
        f"max_connections = {CONNECTIONS}\n"
        "[delivery]\nretry_initial_seconds = 0.05\nretry_max_seconds = 0.2\n"
        "lease_seconds = 6.0\npoll_seconds = 0.02\n"
    )
    return home


def _queue(store: Store, pgp: PgpForTests, n: int) -> list[str]:
    sealed = [make_sealed_for_tests(pgp, reference=f"UVZ-2026-{i:06d}") for i in range(n)]
    store.write_sync(lambda db: [enqueue_with_audit(db, s, None) for s in sealed])
    return [s.message_id for s in sealed]


def _count(store: Store, status: str) -> int:
    return int(
        store.read_sync(
            lambda db: db.execute("SELECT count(*) FROM outbox WHERE status = ?", [status])
        ).fetchone()[0]
    )


def _window(home: Path, store: Store, n: int) -> list[float]:
    from securemail import config

    windows: list[float] = []

    async def main() -> None:
        worker = Worker(config.load(home), store)
        worker.on_commit_window = windows.append
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        while _count(store, "sent") < n:
            await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(main())
    return windows


def _spawn(home: Path) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from securemail.delivery.worker import run_worker_process;"
        " sys.exit(run_worker_process(sys.argv[1]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECUREMAIL_")}
    env["PYTHONPATH"] = str(Path(securemail.__file__).resolve().parents[1])
    with (home / f"worker-{time.monotonic_ns()}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(home)], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("condition not reached in time")
        time.sleep(0.005)


def _kills(
    home: Path, store: Store, relay: IdCounter, n: int, seed: int, burst: float
) -> dict[str, Any]:
    """SIGKILL the worker KILLS times, each a random time (uniform over a fifth of the
    first burst's duration) after it has started delivering again; restart it at once."""
    rng = random.Random(seed)
    moments: list[float] = []
    claimed: list[int] = []
    proc = _spawn(home)
    try:
        for _ in range(KILLS):
            started = relay.total()
            _wait(lambda started=started: relay.total() > started, timeout=300)
            moments.append(round(rng.uniform(0, burst / KILLS), 3))
            time.sleep(moments[-1])
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            claimed.append(_count(store, "sending"))
            proc = _spawn(home)
        _wait(lambda: _count(store, "sent") >= 2 * n, timeout=600)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return {"moments": moments, "claimed": claimed}


def run(quick: bool) -> dict[str, Any]:
    n = 60 if quick else 200
    seed = int(time.time())
    workdir = Path(tempfile.mkdtemp(prefix="smr-"))  # gpg-agent's socket path limit
    controller, relay, port, cafile = _relay(workdir)
    pgp = _pgp(workdir)
    home = _home(workdir, "home", port, cafile)
    store = open_store(home / "securemail.db")
    try:
        _queue(store, pgp, n)
        t0 = time.monotonic()
        windows = _window(home, store, n)
        burst = time.monotonic() - t0
        ids = set(_queue(store, pgp, n))
        kills = _kills(home, store, relay, n, seed, burst)
        repeats = sum(c - 1 for mid, c in relay.ids.items() if mid in ids and c > 1)
        missing = len(ids - set(relay.ids))
        bound = KILLS * CONNECTIONS
    finally:
        store.close()
        controller.stop()
        subprocess.run(
            ["gpgconf", "--homedir", str(pgp.homedir), "--kill", "gpg-agent"], check=False
        )
        shutil.rmtree(workdir, ignore_errors=True)
    p50, p99 = percentile(windows, 0.5), percentile(windows, 0.99)
    return {
        "title": TITLE,
        "messages": n,
        "kills": KILLS,
        "seed": seed,
        "burst_seconds": round(burst, 2),
        "kill_after_seconds": kills["moments"],
        "claimed_at_kills": kills["claimed"],
        "window_p50_ms": round((p50 or 0) * 1000, 2),
        "window_p99_ms": round((p99 or 0) * 1000, 2),
        "repeats": repeats,
        "missing": missing,
        "table": [
            {
                "metric": f"250 -> committed 'sent', p50 (ms, {n} messages)",
                "value": round((p50 or 0) * 1000, 2),
            },
            {"metric": "250 -> committed 'sent', p99 (ms)", "value": round((p99 or 0) * 1000, 2)},
            {
                "metric": f"messages sent twice after {KILLS} SIGKILLs ({n}-message burst)",
                "value": repeats,
                "ratio": round(repeats / KILLS, 2),
                "target": f"<= 1 in flight per connection per kill ({bound})",
                "met": repeats <= bound,
            },
            {
                "metric": "messages never delivered",
                "value": missing,
                "target": "0",
                "met": missing == 0,
            },
        ],
    }
