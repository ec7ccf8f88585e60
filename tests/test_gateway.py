"""The gateway home: init is idempotent, check keeps sending off when something is wrong,
settings are validated once with a clear message."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from securemail import config
from securemail.errors import ConfigError
from securemail.home import gateway_fingerprint, init_home

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "securemail", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="smg-"))  # short: gpg-agent socket path limit
    yield path / "h"
    subprocess.run(
        ["gpgconf", "--homedir", str(path / "h" / "gnupg"), "--kill", "gpg-agent"], check=False
    )
    shutil.rmtree(path, ignore_errors=True)


def test_init_twice_changes_nothing_and_says_so(home: Path) -> None:
    first = cli("init", "--home", str(home))
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    assert stat.S_IMODE((home / "gnupg").stat().st_mode) == 0o700
    before = {p: p.stat().st_mtime_ns for p in (home / "securemail.toml", home / "securemail.db")}
    second = cli("init", "--home", str(home))
    assert second.returncode == 0
    assert "already initialised; nothing changed" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert cli("check", "--home", str(home)).returncode == 0
    journal = subprocess.run(
        ["sqlite3", str(home / "securemail.db"), "PRAGMA journal_mode"],
        capture_output=True,
        text=True,
        check=False,
    )
    if journal.returncode == 0:  # the sqlite3 shell is optional on a fresh machine
        assert journal.stdout.strip() == "wal"


def test_home_from_environment_variable(home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SECUREMAIL_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-m", "securemail", "init"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert (home / "securemail.db").exists()


def test_check_refuses_a_keyring_readable_by_others(home: Path) -> None:
    assert cli("init", "--home", str(home)).returncode == 0
    os.chmod(home / "gnupg", 0o755)  # noqa: S103 (the misconfiguration under test)
    out = cli("check", "--home", str(home))
    assert out.returncode == 1
    assert "must be 0700" in out.stderr


def test_command_on_uninitialised_home_is_one_clear_line(home: Path) -> None:
    out = cli("request", "status", "--home", str(home), "UVZ-2026-000001")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0
    assert "securemail init" in out.stderr
    assert "Traceback" not in out.stderr


def test_settings_refuse_plaintext_smtp(tmp_path: Path) -> None:
    (tmp_path / "securemail.toml").write_text('[smtp]\nstarttls = "never"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path, env={})
    assert "plaintext is never allowed" in info.value.reason


def test_settings_env_overrides_and_type_errors(tmp_path: Path) -> None:
    s = config.load(tmp_path, env={"SECUREMAIL_SMTP_PORT": "2525"})
    assert s.smtp.port == 2525
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path, env={"SECUREMAIL_SMTP_PORT": "many"})
    assert info.value.context["setting"] == "[smtp] port"


def test_settings_unknown_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "securemail.toml").write_text("[smtp]\nhots = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path, env={})
    assert "hots" in info.value.reason


def test_database_file_is_private(home: Path) -> None:
    assert cli("init", "--home", str(home)).returncode == 0
    assert stat.S_IMODE((home / "securemail.db").stat().st_mode) == 0o600


def _agent_answers(gnupg: Path) -> bool:
    out = subprocess.run(
        ["gpg-connect-agent", "--homedir", str(gnupg), "--no-autostart", "/bye"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return out.returncode == 0 and b"no gpg-agent running" not in out.stderr


async def test_closing_services_keeps_agent_another_process_uses(home: Path) -> None:
    # Given a home opened twice (a server and a CLI call share one gpg-agent)
    from securemail.home import open_services

    await init_home(home)
    settings = config.load(home)
    server, cli_call = open_services(settings), open_services(settings)
    await server.keyring.key_info(gateway_fingerprint(server.store))  # agent up
    gnupg = settings.gnupg_home
    assert _agent_answers(gnupg)
    # When the CLI call ends, the agent stays for the server; when the server ends, it goes
    cli_call.close()
    assert _agent_answers(gnupg)
    server.close()
    assert not _agent_answers(gnupg)


def test_fast_cli_commands_come_from_the_module_named_for_them() -> None:
    import argparse
    from importlib import import_module

    from securemail.cli import FAST_COMMANDS

    for command, module in FAST_COMMANDS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        import_module(f"securemail.cli.{module}").register(sub)
        assert command in sub.choices
    assert "{send,status}" in cli("request", "--help").stdout


def test_export_gp_of_an_initialised_home_carries_the_gateways_key(home: Path) -> None:
    """A nurse's client needs the gateway's key to check the seal on a passed-on request:
    `securemail keys export-gp` publishes it beside the GP keys (none yet on a new home)."""
    assert cli("init", "--home", str(home)).returncode == 0
    gateway = subprocess.run(
        ["sqlite3", str(home / "securemail.db"),
         "SELECT value FROM meta WHERE key = 'gateway_fingerprint'"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert len(gateway) == 40
    to_stdout = cli("keys", "export-gp", "--home", str(home))
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert to_stdout.stdout.count("BEGIN PGP PUBLIC KEY BLOCK") == 1
    assert "PRIVATE KEY" not in to_stdout.stdout
    export = home.parent / "huisartsen.asc"
    written = cli("keys", "export-gp", "--output", str(export), "--home", str(home))
    assert written.returncode == 0, written.stderr
    assert f"gateway {gateway} " in written.stdout and "with the gateway's key" in written.stdout
    # what a nurse's gpg sees when it imports the file: the gateway's fingerprint
    nurse = home.parent / "nurse"
    nurse.mkdir(mode=0o700)
    for armored in (export.read_bytes(), to_stdout.stdout.encode()):
        listed = subprocess.run(
            ["gpg", "--homedir", str(nurse), "--batch", "--with-colons", "--import-options",
             "show-only", "--import"],
            input=armored, capture_output=True, check=True, timeout=60,
        ).stdout.decode()  # fmt: skip
        fprs = [line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:")]
        assert fprs[0] == gateway
    subprocess.run(["gpgconf", "--homedir", str(nurse), "--kill", "all"], check=False)
