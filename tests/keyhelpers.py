"""Helpers for the key tests: a lean gateway home (no gateway key, no SMTP) on a short path,
and manifests written by the test from keys made in the test."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from securemail import config
from securemail.home import MIGRATIONS, open_services
from securemail.openpgp.keyring import Keyring
from securemail.services import Services
from securemail.store import Store
from tests.conftest import GpgTestKey

TEAM = "wijkteam-centrum@zorg-noord.example"
TEAM2 = "wijkteam-oost@zorg-noord.example"
ORG = {"name": "Zorg Noord", "ura": "87654321"}


def make_home(**gateway: Any) -> Services:
    """An initialised home under a short path (gpg-agent's socket), settings overridable."""
    home = Path(tempfile.mkdtemp(prefix="smk-"))
    settings = config.load(home, env={})
    if gateway:
        settings = settings.replace(gateway=gateway)
    store = Store(settings.db_path)
    store.migrate(MIGRATIONS)
    store.close()
    Keyring.create(settings.gnupg_home)
    # Tests only: gpg-agent calibrates its passphrase hashing (S2K) to its own clock, which
    # takes seconds per key on a busy 2-core machine; production keeps gpg's calibration.
    with (settings.gnupg_home / "gpg-agent.conf").open("a", encoding="utf-8") as conf:
        conf.write("s2k-count 65536\n")
    return open_services(settings)


def drop_home(svc: Services) -> None:
    svc.close()
    for gnupg in (svc.settings.gnupg_home, svc.settings.home / "nurse"):
        subprocess.run(
            ["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"],
            capture_output=True,
            check=False,
        )
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
