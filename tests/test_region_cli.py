"""`securemail region ...`: the operator sets up the map; English errors name the option and
nothing is written; every change is audited."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_gateway import cli


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="smr-"))  # short: gpg-agent socket path limit
    h = str(path / "h")
    for args in (
        ("init", "--home", h),
        ("org", "add", "--code", "01000001", "--kind", "practice", "--name", "Praktijk A"),
        ("org", "add", "--code", "87000001", "--kind", "nursing", "--name", "Zorg"),
        ("team", "add", "--org", "87000001", "--name", "Centrum", "--address", "c@zorg.example"),
        ("preferred", "--practice", "01000001", "--team", "c@zorg.example"),
    ):
        out = cli(*args, *(() if args[0] == "init" else ("--home", h)))
        assert out.returncode == 0, out.stderr
    yield path / "h"
    subprocess.run(["gpgconf", "--homedir", h + "/gnupg", "--kill", "gpg-agent"], check=False)


def test_region_team_show_and_confirm(home: Path) -> None:
    h = str(home)
    out = cli(
        "region",
        "team",
        "c@zorg.example",
        "--phone",
        "0201234567",
        "--areas",
        "1011-1018,1020",
        "--capacity",
        "beperkt",
        "--service",
        "wondzorg",
        "--reach",
        "kantoor,nacht",
        "--part-phone",
        "nacht=0209999999",
        "--home",
        h,
    )
    assert out.returncode == 0, out.stderr
    out = cli("region", "show", "--json", "--home", h)
    data = json.loads(out.stdout)
    (team,) = data["teams"]
    assert team["areas"] == "1011-1018, 1020" and team["capacity"] == "beperkt"
    assert team["reachability"]["nacht"] == {
        "reachable": True,
        "phone": "0209999999",
        "address": "c@zorg.example",
    }
    # a later change keeps what it does not name
    assert cli("region", "team", "c@zorg.example", "--capacity", "nee", "--home", h).returncode == 0
    out = cli("region", "show", "--home", h)
    assert "capacity=nee" in out.stdout and "1011-1018, 1020" in out.stdout
    assert cli("region", "confirm", "c@zorg.example", "--home", h).returncode == 0
    assert (
        cli(
            "region",
            "practice",
            "01000001",
            "--role",
            "poh",
            "--name",
            "P. O",
            "--phone",
            "0201111111",
            "--home",
            h,
        ).returncode
        == 0
    )
    assert (
        cli(
            "region",
            "contact",
            "--team",
            "c@zorg.example",
            "--practice",
            "01000001",
            "--name",
            "V. Pleeg",
            "--phone",
            "0612345678",
            "--home",
            h,
        ).returncode
        == 0
    )
    db = sqlite3.connect(home / "securemail.db")
    codes = [
        r[0]
        for r in db.execute(
            "SELECT event_code FROM audit_events WHERE event_code LIKE 'team.%' "
            "OR event_code LIKE 'practice.%' ORDER BY seq"
        )
    ]
    db.close()
    assert codes[-5:] == [
        "team.map_update",
        "team.map_update",
        "team.map_confirm",
        "practice.entry_update",
        "team.contact_nurse",
    ]


def test_region_errors_name_the_option_in_english_and_write_nothing(home: Path) -> None:
    h = str(home)
    before = json.loads(cli("region", "show", "--json", "--home", h).stdout)
    out = cli("region", "team", "c@zorg.example", "--areas", "0999", "--phone", "12", "--home", h)
    assert out.returncode == 1
    assert out.stderr.startswith("error: input.invalid: ")
    assert "--areas" in out.stderr and "--phone" in out.stderr and "Traceback" not in out.stderr
    out = cli("region", "team", "c@zorg.example", "--part-phone", "middag=1", "--home", h)
    assert out.returncode == 1 and "--part-phone" in out.stderr
    out = cli("region", "team", "nobody@zorg.example", "--home", h)
    assert out.returncode == 1 and "unknown team" in out.stderr
    assert (
        json.loads(cli("region", "show", "--json", "--home", h).stdout)["teams"] == before["teams"]
    )
