"""The whole path: form -> consent -> sign -> seal -> queue -> STARTTLS relay -> the nurse's gpg.

Every test reads what arrived the way a nurse's mail client would: first it asserts the
patient's identifiers are absent from the raw bytes, then it decrypts with the gpg
command and checks the GP's good signature and the parts inside.
"""

from __future__ import annotations

import email
import json
import subprocess
import sys
from email import policy
from pathlib import Path
from typing import Any

import pytest

from securemail.exchange import send as exchange
from securemail.openpgp.keyring import RecipientKeyError
from tests.gateway import (
    EXAMPLE,
    GP_PASSPHRASE,
    OTHER_TEAM,
    TEAM,
    Gateway,
    deliver_all,
    env_for_cli,
    example,
    request_send_cli,
)
from tests.loop_fixtures import verify_order

PATIENT_MARKERS = [
    EXAMPLE["patient"]["bsn"].encode(),
    EXAMPLE["patient"]["name"].encode(),
    EXAMPLE["patient"]["birth_date"].encode(),
    "-".join(reversed(EXAMPLE["patient"]["birth_date"].split("-"))).encode(),
    EXAMPLE["patient"]["postcode"].encode(),
]


def assert_opens_as_nurse(gw: Gateway, raw: bytes) -> email.message.EmailMessage:
    for marker in PATIENT_MARKERS:
        assert marker not in raw, "patient data outside the encryption"
    outer = email.message_from_bytes(raw, policy=policy.default)
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    assert outer["Subject"].startswith("Uitvoeringsverzoek UVZ-")
    result = gw.decrypt_as_nurse(raw)
    assert result.returncode == 0, result.stderr.decode()
    status = result.stderr.decode()
    assert "[GNUPG:] DECRYPTION_OKAY" in status
    # the GP's order is RFC 3156 6.1: the team's gpg verifies the multipart/signed part
    verified, _ = verify_order(gw.nurse_home, result.stdout)
    assert "[GNUPG:] GOODSIG" in verified
    inner = email.message_from_bytes(result.stdout, policy=policy.default)
    types = [p.get_content_type() for p in inner.walk()]
    assert "text/plain" in types
    assert "application/json" in types
    return inner


def cli_send(
    gw: Gateway, tmp_path: Path, data: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    """`securemail request send` as a practice system runs it: a file and a passphrase file."""
    req_file = tmp_path / "request.json"
    req_file.write_text(json.dumps(data), encoding="utf-8")
    return request_send_cli(gw, tmp_path, "--file", str(req_file), *extra)


async def test_cli_send_arrives_encrypted_signed_and_neutral(
    gw: Gateway, smtp_server: Any, tmp_path: Path
) -> None:
    # Given the example request and the GP's passphrase in a file
    gw.svc.close()
    # When the practice system sends it with the CLI
    proc = cli_send(gw, tmp_path, example())
    # Then it prints the reference and exits 0 (durably queued)
    assert proc.returncode == 0, proc.stderr
    reference = proc.stdout.strip().splitlines()[0]
    assert reference.startswith("UVZ-")
    from securemail import config
    from securemail.home import open_services

    gw.svc = open_services(config.load(gw.home))
    await deliver_all(gw.svc)
    # And the team's mail client opens it
    [raw] = [m for m in smtp_server.handler.mailbox().values() if b"multipart/encrypted" in m]
    inner = assert_opens_as_nurse(gw, raw)
    doc = next(p for p in inner.walk() if p.get_content_type() == "application/json")
    data = json.loads(
        doc.get_content() if isinstance(doc.get_content(), str) else doc.get_content().decode()
    )
    assert data["reference"] == reference
    assert data["patient"]["bsn"] == EXAMPLE["patient"]["bsn"]
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "securemail",
            "request",
            "status",
            "--home",
            str(gw.home),
            reference,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env_for_cli(),
        check=True,
    )
    info = json.loads(status.stdout)
    assert info["delivery"][0]["status"] == "sent"
    assert EXAMPLE["patient"]["bsn"] not in status.stdout


def test_cli_send_twice_with_one_idempotency_key_makes_one_request(
    gw: Gateway, tmp_path: Path
) -> None:
    """A practice system that timed out and runs the same send again, with its own key."""
    gw.svc.close()
    runs = [cli_send(gw, tmp_path, example(), "--idempotency-key", "his-7781") for _ in "ab"]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    first, again = (r.stdout.strip().splitlines()[0] for r in runs)
    assert first.startswith("UVZ-") and again == first
    other = example()
    other["patient"]["phone"] = "0201234567"  # a different request under the same key
    refused = cli_send(gw, tmp_path, other, "--idempotency-key", "his-7781")
    assert refused.returncode != 0 and "idempotency.conflict" in refused.stderr
    from securemail import config
    from securemail.home import open_services

    gw.svc = open_services(config.load(gw.home))
    count = gw.svc.store.read_sync(lambda db: db.execute("SELECT count(*) FROM requests"))
    assert count.fetchone()[0] == 1


async def test_send_with_api_function_records_audit_rows(gw: Gateway, smtp_server: Any) -> None:
    result = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    codes = gw.svc.store.read_sync(
        lambda db: [
            r[0]
            for r in db.execute(
                "SELECT event_code FROM audit_events WHERE object_id = ? ORDER BY seq",
                [result.reference],
            )
        ]
    )
    assert "consent.check" in codes
    assert codes[-1] == "request.send"
    await deliver_all(gw.svc)
    assert len(smtp_server.handler.mailbox()) == 2  # the request and the practice's notice
    codes = gw.svc.store.read_sync(
        lambda db: [
            r[0]
            for r in db.execute(
                "SELECT event_code FROM audit_events WHERE object_id = ?", [result.reference]
            )
        ]
    )
    assert "request.deliver" in codes


async def test_send_refuses_wrong_passphrase_and_queues_nothing(gw: Gateway) -> None:
    from securemail.errors import SecuremailError

    with pytest.raises(SecuremailError) as info:
        await exchange.send(gw.svc, gw.gp, example(), "not the passphrase")
    assert info.value.code == "seal.bad_passphrase"
    assert gw.svc.store.read_sync(lambda db: db["outbox"].count) == 0


async def test_send_to_team_without_usable_key_is_refused_and_nothing_leaves(
    gw: Gateway, smtp_server: Any
) -> None:
    from tests.gateway import grant_consent

    grant_consent(gw.svc, gw.gp, EXAMPLE["patient"]["bsn"], OTHER_TEAM)
    with pytest.raises(RecipientKeyError) as info:
        await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE, to=OTHER_TEAM)
    assert OTHER_TEAM in info.value.diagnostics()
    assert gw.svc.store.read_sync(lambda db: db["outbox"].count) == 0
    refused = gw.svc.store.read_sync(
        lambda db: db.execute(
            "SELECT outcome, outcome_detail FROM audit_events WHERE event_code = 'request.send'"
        ).fetchall()
    )
    assert refused == [("refused", "seal.key_unusable")]
    assert smtp_server.handler.snapshot() == []


@pytest.mark.parametrize(
    ("mutate", "field_path", "code"),
    [
        (lambda d: d["patient"].__setitem__("bsn", "123456789"), "patient.bsn", "bsn.elfproef"),
        (lambda d: d["patient"].pop("name"), "patient.name", "required"),
        (
            lambda d: d["period"].update(end_date="2020-01-01", until_further_notice=False),
            "period.end_date",
            None,
        ),
        (lambda d: d["procedures"][0].__setitem__("code", "INJ_XYZ"), "procedures.0.code", None),
        (
            lambda d: d["procedures"][0].__setitem__("code", "WOUND_CARE"),
            "procedures.0.code",
            "procedure.not_reserved",
        ),
    ],
    ids=["wrong-bsn", "missing-name", "end-before-start", "unknown-code", "not-reserved"],
)
def test_cli_send_invalid_field_gets_its_own_error_and_queues_nothing(
    gw: Gateway, tmp_path: Path, mutate: Any, field_path: str, code: str | None
) -> None:
    data = example()
    mutate(data)
    gw.svc.close()
    proc = cli_send(gw, tmp_path, data)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert field_path in proc.stderr
    if code:
        assert code in proc.stderr
    assert EXAMPLE["patient"]["bsn"] not in proc.stderr
    from securemail.store import Store

    store = Store(gw.home / "securemail.db")
    try:
        assert store.read_sync(lambda db: db["outbox"].count) == 0
    finally:
        store.close()
    gw.svc = __import__("securemail.home", fromlist=["x"]).open_services(
        __import__("securemail.config", fromlist=["x"]).load(gw.home)
    )


async def test_team_address_unknown_is_a_field_error(gw: Gateway) -> None:
    from securemail.form.request import FormInvalidError

    with pytest.raises(FormInvalidError) as info:
        await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE, to="niemand@nergens.example")
    assert [e.field for e in info.value.errors] == ["receiver.team_address"]


def test_team_constant_matches_example() -> None:
    assert EXAMPLE["receiver"]["team_address"] == TEAM
