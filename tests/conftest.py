"""Fixtures shared across test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.web_fixtures import WebApp


@pytest.fixture(scope="session")
def web_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """An initialised home with the test people, built once: (root, {username: TOTP secret})."""
    from tests.web_fixtures import build_template_home

    root = tmp_path_factory.mktemp("web-template")
    return root, build_template_home(root)


@pytest.fixture
async def webapp(web_template: tuple[Path, dict[str, str]], tmp_path: Path,
                 aiohttp_client: Any) -> AsyncIterator[WebApp]:
    """The real app over HTTP on 127.0.0.1, on a fresh copy of the template home."""
    from tests.web_fixtures import copy_home, start_web

    root, secrets = web_template
    w = await start_web(copy_home(root, tmp_path / "home"), secrets, aiohttp_client)
    yield w
    await w.close()
