"""The README's consent commands against the demo home, as a newcomer types them:
`securemail demo --setup-only --home H`, then `securemail consent grant/list/withdraw/export
--as huisarts`, each a real process."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.gateway import env_for_cli

PATIENT = "999990123"  # the demo's example patient
OOST = "wijkteam-oost@zorg-noord.example"


def securemail(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "securemail", *args[:2], "--home", str(home), *args[2:]],
        capture_output=True,
        text=True,
        env=env_for_cli(),
        timeout=180,
        check=False,
    )


def test_consent_commands_of_the_readme_work_on_the_demo_home() -> None:
    home = Path(tempfile.mkdtemp(prefix="smc-"))  # short: gpg-agent's socket path
    try:
        setup = subprocess.run(
            [sys.executable, "-m", "securemail", "demo", "--home", str(home), "--setup-only"],
            capture_output=True,
            text=True,
            env=env_for_cli(),
            timeout=180,
            check=False,
        )
        assert setup.returncode == 0, setup.stderr
        proof = home / "toestemming.pdf"
        proof.write_bytes(b"%PDF-1.4 demo consent form")
        grant = securemail(
            "consent",
            "grant",
            "--as",
            "huisarts",
            "--patient",
            PATIENT,
            "--recipient",
            OOST,
            "--until",
            "today+12m",  # as the README: no calendar date that the real one passes
            "--evidence",
            str(proof),
            home=home,
        )
        assert grant.returncode == 0, grant.stderr
        assert grant.stdout.startswith("recorded permit ")

        listed = securemail(
            "consent", "list", "--as", "huisarts", "--patient", PATIENT, "--json", home=home
        )
        assert listed.returncode == 0, listed.stderr
        records = json.loads(listed.stdout)
        [oost] = [r for r in records if r["valid_until"]]
        assert (oost["status"], oost["decision"], oost["evidence_ref"]) == (
            "active",
            "permit",
            "toestemming.pdf",
        )
        assert oost["evidence_sha256"] == hashlib.sha256(proof.read_bytes()).hexdigest()
        assert len(records) == 2  # and the demo's consent for Wijkteam Centrum

        export = securemail("consent", "export", "--as", "huisarts", home=home)
        assert export.returncode == 0, export.stderr
        bundle = json.loads(export.stdout)
        assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) == 2

        withdraw = securemail(
            "consent",
            "withdraw",
            "--as",
            "huisarts",
            "--patient",
            PATIENT,
            "--recipient",
            OOST,
            "--channel",
            "phone",
            home=home,
        )
        assert withdraw.returncode == 0, withdraw.stderr
        assert "withdrawn " in withdraw.stdout and "stopped requests: none" in withdraw.stdout
        after = json.loads(
            securemail(
                "consent", "list", "--as", "huisarts", "--patient", PATIENT, "--json", home=home
            ).stdout
        )
        assert sorted(r["status"] for r in after) == ["active", "withdrawn"]
        again = securemail(
            "consent",
            "withdraw",
            "--as",
            "huisarts",
            "--patient",
            PATIENT,
            "--recipient",
            OOST,
            "--channel",
            "phone",
            home=home,
        )
        assert again.returncode != 0
        assert PATIENT not in again.stderr  # errors name ids, never the BSN
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home / "gnupg"), "--kill", "all"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(home, ignore_errors=True)
