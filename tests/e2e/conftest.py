"""A whole gateway for end-to-end tests (tests/gateway.py ``build_gateway``, e2e cast): an
initialised home, a practice with a GP whose signing key is made in the test, a nursing team
whose member keys are made in the test (secret halves only in the test's 'mail client'
keyring), consent on record, and a real STARTTLS relay on 127.0.0.1 that records every byte.

The builder and the helpers the e2e tests import live in tests/gateway.py (a plain module:
tests outside e2e/ use it too, and a conftest is not meant to be imported)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.gateway import (
    Gateway,
    build_gateway,
    close_gateway,
    make_team_member_keys,
    relay_settings,
)


@pytest.fixture(scope="session")
def team_member_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two nurses' key pairs, made once per session: {'public': armor, 'secret': armor}."""
    return make_team_member_keys(tmp_path_factory.mktemp("team-keys") / "gnupg")


@pytest.fixture
async def gw(
    team_member_keys: dict[str, str], smtp_server: Any, relay_cafile: str
) -> AsyncIterator[Gateway]:
    g = await build_gateway(
        team_keys=team_member_keys, smtp=relay_settings(smtp_server, relay_cafile)
    )
    yield g
    close_gateway(g)
