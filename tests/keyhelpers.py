"""Helpers for the key tests: a lean gateway home (tests/gateway.py: no gateway key, no SMTP),
and manifests written by the test from keys made in the test."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from securemail.services import Services
from tests.conftest import GpgTestKey
from tests.gateway import kill_agents, lean_home

TEAM = "wijkteam-centrum@zorg-noord.example"
TEAM2 = "wijkteam-oost@zorg-noord.example"
ORG = {"name": "Zorg Noord", "ura": "87654321"}


def make_home(**gateway: Any) -> Services:
    """A lean home (tests/gateway.py ``lean_home``: no gateway key, no SMTP) under a short
    path, ``gateway`` settings replaced."""
    return lean_home(**gateway)


def drop_home(svc: Services) -> None:
    svc.close()
    kill_agents(svc.settings.gnupg_home, svc.settings.home / "nurse")
    shutil.rmtree(svc.settings.home, ignore_errors=True)


def member(key: GpgTestKey, name: str, email: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "name": name,
        "email": email or key.email,
        "fingerprint": key.fingerprint,
        "key": f"{key.fingerprint[-8:]}.asc",
        "verified_by": "J. de Vries (regiobeheer)",
        "verified_how": "fingerprint read back by the team lead on the known number",
        "verified_at": "2026-01-12",
        **extra,
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return '"' + str(value).replace('"', '\\"') + '"'


def write_manifest(
    folder: Path,
    teams: dict[str, list[dict[str, str]]],
    keys: list[GpgTestKey] = (),  # type: ignore[assignment]
    *,
    org: dict[str, str] = ORG,
) -> Path:
    """keys/directory.toml with one [[team]] per address, and each key's armor beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.asc"):
        old.unlink()
    for key in keys:
        (folder / f"{key.fingerprint[-8:]}.asc").write_text(key.public, encoding="ascii")
    lines = ["version = 1", 'region = "test region"', ""]
    for address, members in teams.items():
        lines += [
            "[[team]]",
            f'address = "{address}"',
            f'name = "Team {address.split("@")[0]}"',
            f"organisation = {_toml_value(org)}",
            "",
        ]
        for m in members:
            lines.append("[[team.member]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in m.items()]
            lines.append("")
    (folder / "directory.toml").write_text("\n".join(lines), encoding="utf-8")
    return folder
