"""The delivery room's tests share one store fixture (a migrated sqlite file per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from securemail.home import open_store
from securemail.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "securemail.db")
    yield s
    s.close()
