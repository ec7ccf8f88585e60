"""`securemail demo` as a newcomer runs it: a real process with its own STARTTLS relay.

A request sent from the web form and one sent with `securemail request send` must both
arrive in H/demo/maildir/ as PGP/MIME that gpg opens with H/demo/team-secret.asc, with a
good signature by the GP's key, text/plain and application/json inside, and no patient
identifier outside the encryption.
"""

from __future__ import annotations

import asyncio
import email
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.webflow import login, send_via_form
from tests.gateway import EXAMPLE, env_for_cli, example
from tests.loop_fixtures import verify_order
from tests.smtp_fixtures import free_port


@pytest.fixture
def demo() -> Iterator[dict[str, Any]]:
    home = Path(tempfile.mkdtemp(prefix="smd-"))
    port, smtp_port = free_port(), free_port()
    log = (home.parent / f"{home.name}.log").open("w", encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "securemail",
            "demo",
            "--home",
            str(home),
            "--port",
            str(port),
            "--smtp-port",
            str(smtp_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env_for_cli(),
        text=True,
    )
    creds_file = home / "demo" / "credentials.json"
    deadline = time.monotonic() + 120
    up = False
    while time.monotonic() < deadline and proc.poll() is None:
        if creds_file.exists():
            try:
                import socket

                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    up = True
                    break
            except OSError:
                pass
        time.sleep(0.2)
    if not up:
        proc.kill()
        log.close()
        pytest.fail(f"demo did not come up:\n{Path(log.name).read_text(encoding='utf-8')}")
    try:
        yield {
            "home": home,
            "port": port,
            "proc": proc,
            "creds": json.loads(creds_file.read_text(encoding="utf-8")),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        Path(log.name).unlink(missing_ok=True)
        for gnupg in home.rglob("gnupg"):
            subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def user(creds: dict[str, Any], username: str) -> dict[str, Any]:
    return next(u for u in creds["users"] if u["username"] == username)


def wait_for_mail(maildir: Path, count: int, timeout: float = 60) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted((maildir / "new").glob("*")) if (maildir / "new").exists() else []
        if len(files) >= count:
            return files
        time.sleep(0.2)
    raise AssertionError(f"expected {count} messages in {maildir}")


def open_as_team(home: Path, raw: bytes, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    gnupg = tmp / "client"
    if not gnupg.exists():
        gnupg.mkdir(mode=0o700)
        for name in ("team-secret.asc", "public-keys.asc"):
            subprocess.run(
                ["gpg", "--homedir", str(gnupg), "--batch", "--import", str(home / "demo" / name)],
                check=True,
                capture_output=True,
            )
    return subprocess.run(
        ["gpg", "--homedir", str(gnupg), "--batch", "--status-fd", "2", "--decrypt"],
        input=raw,
        capture_output=True,
        check=False,
    )


def run_readme_step_4(home: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """The shell block of the README's tour step 4, run by bash from a folder whose var/ is
    the demo's home (its gpg-agent is stopped after)."""
    return run_readme_step("4. The local relay", home, tmp / "readme")


def run_readme_step(heading: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The first shell block after ``heading`` in the README's tour, as bash runs it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    step = readme[readme.index(heading) :]
    script = step[step.index("```sh") + len("```sh") : step.index("```", step.index("```sh") + 5)]
    # The block is indented under its list item; a heredoc's end marker must not be.
    script = "\n".join(line.removeprefix("   ") for line in script.splitlines())
    cwd.mkdir()
    (cwd / "var").symlink_to(home)
    (cwd / ".venv").symlink_to(Path(sys.prefix))  # the tour's venv
    return subprocess.run(
        ["bash", "-euc", script + "\ngpgconf --kill gpg-agent\n"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_demo_web_and_cli_requests_arrive_in_maildir_sealed(demo: dict[str, Any]) -> None:
    home, creds = demo["home"], demo["creds"]
    base = f"http://127.0.0.1:{demo['port']}"
    gp = user(creds, "huisarts")
    # Given the GP sends the example from the web form
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login(http, base, gp)
        reference = await send_via_form(http, base, example(), gp["signing_passphrase"])
        # The seeded region is on the map, and the map holds nothing of the patient just sent
        pages = []
        for path in ("/regio", "/regio.json", "/regio.csv"):
            async with http.get(f"{base}{path}") as r:
                assert r.status == 200, path
                pages.append(await r.text())
    for name in ("Wijkteam Centrum", "Wijkteam Oost", "Wijkteam West", "Nachtteam Stad"):
        assert name in pages[0]
    assert "doorbemiddeling@stadszorg.example" in pages[0] and "verouderd" in pages[0]
    assert "nieuwe cliënten: nee" in pages[0]
    for text in pages:
        for marker in (
            EXAMPLE["patient"]["bsn"],
            EXAMPLE["patient"]["name"],
            EXAMPLE["patient"]["postcode"],
            EXAMPLE["patient"]["address"],
        ):
            assert marker not in text
    assert re.fullmatch(r"UVZ-\d{4}-\d{6}", reference)
    # And a practice system sends one with the CLI
    passfile = home / "demo" / "pp"
    passfile.write_text(gp["signing_passphrase"], encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "securemail",
        "request",
        "send",
        "--home",
        str(home),
        "--as",
        "huisarts",
        "--file",
        str(Path("examples/uitvoeringsverzoek.json").resolve()),
        "--passphrase-file",
        str(passfile),
        env=env_for_cli(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    cli_reference = out.decode().split()[0]
    # Then both arrive (plus the practice's notices, which go to another address)
    maildir = home / "demo" / "maildir"
    deadline = time.monotonic() + 60
    sealed: dict[str, bytes] = {}
    while time.monotonic() < deadline and len(sealed) < 2:
        for f in (maildir / "new").glob("*") if (maildir / "new").exists() else []:
            raw = f.read_bytes()
            msg = email.message_from_bytes(raw, policy=policy.default)
            if msg.get_content_type() == "multipart/encrypted":
                sealed[str(msg["Subject"]).split()[-1]] = raw
        await asyncio.sleep(0.2)
    assert set(sealed) == {reference, cli_reference}
    tmp = Path(tempfile.mkdtemp(prefix="smt-"))
    try:
        for raw in sealed.values():
            for marker in (
                EXAMPLE["patient"]["bsn"],
                EXAMPLE["patient"]["name"],
                EXAMPLE["patient"]["birth_date"],
            ):
                assert marker.encode() not in raw
            result = open_as_team(home, raw, tmp)
            assert result.returncode == 0, result.stderr.decode()
            verified, _ = verify_order(tmp / "client", result.stdout)  # RFC 3156 6.1
            assert "[GNUPG:] GOODSIG" in verified
            inner = email.message_from_bytes(result.stdout, policy=policy.default)
            types = {p.get_content_type() for p in inner.walk()}
            assert {"text/plain", "application/json"} <= types
        # And the README's tour step 4 works as written, notices in the maildir and all
        readme = run_readme_step_4(home, tmp)
        assert readme.returncode == 0, readme.stderr
        assert "Good signature from" in readme.stderr
        assert "application/json" in readme.stdout
        # And step 5: the nurse's encrypted, signed reply is taken onto the thread
        reply = run_readme_step("5. Reply as the nurse", home, tmp / "reply")
        assert reply.returncode == 0, reply.stderr
        assert "taken" in reply.stdout
        db = sqlite3.connect(home / "securemail.db")
        try:
            [(count,)] = db.execute("SELECT count(*) FROM replies").fetchall()
            [(audited,)] = db.execute(
                "SELECT count(*) FROM audit_events WHERE event_code = 'request.reply'"
            ).fetchall()
        finally:
            db.close()
        assert (count, audited) == (1, 1)
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(tmp / "client"), "--kill", "gpg-agent"], check=False
        )
        shutil.rmtree(tmp, ignore_errors=True)


def test_demo_setup_twice_duplicates_nothing(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="smd-"))
    try:
        for _ in range(2):
            proc = subprocess.run(
                [sys.executable, "-m", "securemail", "demo", "--home", str(home), "--setup-only"],
                capture_output=True,
                text=True,
                env=env_for_cli(),
                timeout=180,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
        creds = json.loads((home / "demo" / "credentials.json").read_text(encoding="utf-8"))
        assert {u["role"] for u in creds["users"]} == {
            "gp", "nurse", "privacy_officer", "admin", "coordinator"}  # fmt: skip
        assert "PRIVATE KEY" in (home / "demo" / "team-secret.asc").read_text(encoding="utf-8")
        assert oct(os.stat(home / "demo" / "credentials.json").st_mode & 0o777) == "0o600"
        from securemail.store import Store

        store = Store(home / "securemail.db")
        try:
            counts = store.read_sync(
                lambda db: (
                    db["users"].count,
                    db["teams"].count,
                    db["consents"].count,
                    db["team_map"].count,
                    db["contact_nurses"].count,
                )
            )
        finally:
            store.close()
        # the region: three day teams, a night team and the passing-on desk, all on the map
        assert counts == (6, 5, 1, 5, 4)
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home / "gnupg"), "--kill", "gpg-agent"], check=False
        )
        shutil.rmtree(home, ignore_errors=True)
