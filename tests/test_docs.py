"""Documentation that cannot go stale: settings, error codes, audit actions, CLI help."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import securemail
from securemail import config
from securemail.audit.trail import EVENT_CODES
from securemail.errors import SecuremailError

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _all_errors() -> dict[str, type[SecuremailError]]:
    for m in pkgutil.walk_packages(securemail.__path__, "securemail."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)
    seen: dict[str, type[SecuremailError]] = {}

    def walk(cls: type[SecuremailError]) -> None:
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("securemail."):  # not the tests' own subclasses
                seen.setdefault(sub.code, sub)
            walk(sub)

    walk(SecuremailError)
    return seen


def test_settings_doc_matches_the_declarations() -> None:
    assert (DOCS / "settings.md").read_text(encoding="utf-8").strip() == (
        config.render_markdown().strip()
    ), "run: securemail settings --markdown > docs/settings.md"


def test_every_error_code_is_documented() -> None:
    text = (DOCS / "errors.md").read_text(encoding="utf-8") + (DOCS / "forms.md").read_text(
        encoding="utf-8"
    )
    missing = [code for code in _all_errors() if f"`{code}`" not in text]
    assert not missing, f"document these in docs/errors.md: {missing}"


def test_every_audit_action_is_documented() -> None:
    text = (DOCS / "audit-actions.md").read_text(encoding="utf-8")
    missing = [code for code in EVENT_CODES if f"`{code}`" not in text]
    assert not missing, f"document these in docs/audit-actions.md: {missing}"


def test_init_toml_documents_every_setting() -> None:
    text = config.render_toml()
    for section, cls in config.SECTIONS.items():
        assert f"[{section}]" in text
        for name in cls.__dataclass_fields__:
            assert f"\n{name} = " in text


@pytest.mark.parametrize(
    "command",
    [
        "init",
        "check",
        "demo",
        "request",
        "consent",
        "outbox",
        "keys",
        "org",
        "team",
        "user",
        "region",
        "adherence",
        "backup",
        "restore",
    ],
)
def test_cli_help_works_for(command: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "securemail", command, "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
