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
