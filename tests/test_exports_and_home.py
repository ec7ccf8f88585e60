"""Smaller hardening: CSV exports neutralise spreadsheet formulas; `securemail init` makes the
home its owner's only."""

from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path

import pytest

from securemail.home import init_home
from securemail.message import csvsafe


@pytest.mark.parametrize(
    "value", ['=HYPERLINK("http://x","klik")', "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"]
)
def test_a_cell_that_would_be_a_formula_is_written_as_text(value: str) -> None:
    out = io.StringIO()
    csvsafe.writer(out).writerow(["Team", value, 3, -2])
    row = next(csv.reader(io.StringIO(out.getvalue())))
    assert row[1] == "'" + value
    assert row[0] == "Team" and row[2:] == ["3", "-2"]  # numbers stay numbers


def test_every_export_writes_through_the_safe_writer() -> None:
    root = Path(csvsafe.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "csv.writer(" in p.read_text(encoding="utf-8") and p.name != "csvsafe.py"
    ]
    assert offenders == []


async def test_init_makes_the_home_0700_whatever_the_umask(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        await init_home(home)
    finally:
        os.umask(old)
        from tests.gateway import kill_agents

        kill_agents(home / "gnupg")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


DEMO_CREDS = {
    "users": [
        {
            "role": "gp",
            "username": "huisarts",
            "password": "pw-S3CRET-one",
            "totp_secret": "TOTPS3CRETXYZ",
            "signing_passphrase": "pp-S3CRET",
        },
        {"role": "nurse", "username": "verpleegkundige", "password": "pw-S3CRET-two"},
    ],
    "team_address": "centrum@zorg.example",
}


def test_the_demo_welcome_logs_no_password_totp_secret_or_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not on a terminal (a pipe, a file, a service log: the e2e demo test itself sends it to
    # a .log file): names and roles only, the secrets stay in the 0600 file.
    from securemail import config, demo

    settings = config.Settings(home=tmp_path)
    demo._print_welcome(DEMO_CREDS, demo.DemoPaths(tmp_path), settings, on_terminal=False)
    out = capsys.readouterr().out
    assert "huisarts" in out and "verpleegkundige" in out
    assert str(tmp_path / "credentials.json") in out
    assert "S3CRET" not in out


def test_the_demo_welcome_shows_the_credentials_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # make demo on a fresh machine: the person trying it needs the logins first.
    from securemail import config, demo

    settings = config.Settings(home=tmp_path)
    demo._print_welcome(DEMO_CREDS, demo.DemoPaths(tmp_path), settings, on_terminal=True)
    out = capsys.readouterr().out
    for secret in ("pw-S3CRET-one", "pw-S3CRET-two", "TOTPS3CRETXYZ", "pp-S3CRET"):
        assert secret in out
