"""home.MIGRATIONS: every migration set listed once, in the order it applies (issue 17)."""

from __future__ import annotations

import ast
import importlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from securemail import home

PACKAGE = Path(home.__file__).resolve().parent


def _set_owners() -> dict[str, str]:
    """module -> the name of the ``Migrations(...)`` set it defines, found by reading source."""
    owners: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Migrations"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
                owners[".".join(parts).removesuffix(".__init__")] = node.args[0].value
    return owners


def test_every_table_owning_module_has_its_set_in_the_list() -> None:
    owners = _set_owners()
    assert len(owners) >= 18, owners  # the scan found the table owners
    listed = {id(m) for m in home.MIGRATIONS}
    missing = [
        module for module in owners if id(importlib.import_module(module).MIGRATIONS) not in listed
    ]
    assert not missing, f"add these modules' MIGRATIONS to securemail.home.MIGRATIONS: {missing}"
    assert len(home.MIGRATIONS) == len(owners), "a set is listed twice, or one has no owner"
    names = [m.name for m in home.MIGRATIONS]
    assert sorted(names) == sorted(owners.values()) and len(set(names)) == len(names)


def test_retention_seals_last() -> None:
    assert home.MIGRATIONS[-1].name == "securemail.retention"


def test_a_process_whose_only_import_is_home_migrates_an_empty_database(tmp_path: Path) -> None:
    db = tmp_path / "securemail.db"
    script = (
        "import json, sys\n"
        "from securemail.home import MIGRATIONS, open_store\n"
        "store = open_store(sys.argv[1])\n"
        "print(json.dumps({'pending': store.pending_migrations(),\n"
        "                  'sets': [m.name for m in MIGRATIONS]}))\n"
        "store.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(db)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    assert result["pending"] == []
    conn = sqlite3.connect(db)
    try:
        applied = {r[0] for r in conn.execute("SELECT migration_set FROM _sqlite_migrations")}
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert applied == set(result["sets"])
    assert {"meta", "counters", "requests", "outbox", "audit_events", "consents"} <= tables


def test_a_stored_request_is_typed_with_every_column_of_its_table(tmp_path: Path) -> None:
    # RequestRow is what request_row() returns (a cast of the sqlite row): a migration that
    # adds a column to requests must add it to the type too, or this fails.
    from typing import get_type_hints

    from securemail.exchange.view import RequestRow

    store = home.open_store(tmp_path / "securemail.db")
    try:
        columns = store.read_sync(lambda db: [c.name for c in db.table("requests").columns])
    finally:
        store.close()
    assert list(get_type_hints(RequestRow)) == columns
