"""The privacy pack is written from the installation's own configuration: its retention
periods, limits and relay are the configured ones, and a configuration change shows up
when it is made anew. The CLI runs on a real initialised home."""

from __future__ import annotations

import re
from pathlib import Path

from securemail import config
from securemail.ops import privacy_pack
from tests.test_gateway import ROOT, cli, home  # noqa: F401 (fixture)

TOML = """
[retention]
content_days = 14
metadata_days = 400
[audit]
retention_years = 7
[web]
session_max_hours = 6
[smtp]
host = "relay.zorgregio.example"
"""


def _table(md: str, heading: str) -> dict[str, str]:
    """The two-column table under '## heading' as {first cell: second cell}."""
    part = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in part.splitlines() if line.startswith("| ")]
    return {r[0].strip(): r[1].strip() for r in rows[1:]}


def _days(text: str) -> int:
    return int(re.match(r"(\d+) ", text).group(1))  # type: ignore[union-attr]


def test_the_packs_retention_periods_are_the_settings(tmp_path: Path):
    (tmp_path / "securemail.toml").write_text(TOML)
    s = config.load(tmp_path, env={})
    written = privacy_pack.write(s, [], tmp_path / "pack")
    names = sorted(p.name for p in written)
    assert names == sorted(f"{d}.{ext}" for d in privacy_pack.DOCUMENTS for ext in ("md", "pdf"))
    for doc in ("verwerkingsregister", "verwerkersovereenkomst-bijlage", "dpia"):
        md = (tmp_path / "pack" / f"{doc}.md").read_text()
        table = _table(md, "Bewaartermijnen")
        by_start = {k.split(" ")[0]: v for k, v in table.items()}
        assert _days(by_start["Inhoud"]) == s.retention.content_days == 14
        assert _days(by_start["Metagegevens"]) == s.retention.metadata_days == 400
        assert by_start["Audittrail"] == f"{s.audit.retention_years} jaar na vastlegging"
        assert by_start["Sessies"] == f"{s.web.session_max_hours} uur na inloggen"
        assert f"daarna {s.audit.retention_years} jaar" in by_start["Toestemmingen"]
        assert privacy_pack.settings_digest(s) in md
    register = (tmp_path / "pack" / "verwerkingsregister.md").read_text()
    assert "relay.zorgregio.example" in register
    assert (tmp_path / "pack" / "dpia.pdf").read_bytes().startswith(b"%PDF")


def test_a_configuration_change_changes_the_pack(tmp_path: Path):
    (tmp_path / "securemail.toml").write_text(TOML)
    before = privacy_pack.register_md(config.load(tmp_path, env={}), [])
    (tmp_path / "securemail.toml").write_text(TOML.replace("content_days = 14", "content_days = 9"))
    after = privacy_pack.register_md(config.load(tmp_path, env={}), [])
    assert "9 dagen na" in after and "14 dagen na" not in after
    assert before.split("instellingen-digest")[1] != after.split("instellingen-digest")[1]


def test_every_measure_points_to_a_test_or_document_that_exists(tmp_path: Path):
    s = config.load(tmp_path, env={})
    for m in privacy_pack.measures(s):
        for ref in m.evidence.split(", "):
            assert (ROOT / ref).exists(), f"{m.text[:40]}: {ref} does not exist"


def test_no_secret_setting_reaches_the_pack(tmp_path: Path):
    (tmp_path / "securemail.toml").write_text('[smtp]\npassword = "hunter2-relay"\n')
    s = config.load(tmp_path, env={})
    pack = privacy_pack.register_md(s, []) + privacy_pack.annex_md(s) + privacy_pack.dpia_md(s)
    assert "hunter2-relay" not in pack


def test_cli_writes_the_pack_for_an_initialised_home(home: Path):  # noqa: F811
    assert cli("init", "--home", str(home)).returncode == 0
    out = home.parent / "pack"
    run = cli("privacy-pack", "--home", str(home), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert (out / "verwerkingsregister.md").exists() and (out / "dpia.pdf").exists()
    assert str(out / "verwerkersovereenkomst-bijlage.md") in run.stdout
