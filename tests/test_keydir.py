"""The reviewed key directory with real keys made in the test: the manifest's validation,
sync (exactly what is pinned, nothing else), removal, and the change-of-key quarantine
released only by the phone code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from securemail.access import SYSTEM
from securemail.errors import NotFoundError
from securemail.exchange import send as exchange
from securemail.home import check_home
from securemail.keys import pinning as keydir
from securemail.keys.manifest import ManifestError, load_manifest
from securemail.openpgp.keyinfo import phone_code, phone_code_matches
from securemail.openpgp.keyring import RecipientKeyError
from securemail.region import directory
from securemail.services import Services
from tests.conftest import GpgTestKey
from tests.keyhelpers import TEAM, drop_home, make_home, member, write_manifest


@pytest.fixture(scope="module")
def keys(gpg_keygen: Callable[..., GpgTestKey]) -> dict[str, GpgTestKey]:
    return {
        "een": gpg_keygen("Een", "een@zorg-noord.example"),
        "twee": gpg_keygen("Twee", "twee@zorg-noord.example"),
        "een_new": gpg_keygen("Een", "een@zorg-noord.example"),
        "stranger": gpg_keygen("Stranger", "een@zorg-noord.example"),
    }


@pytest.fixture
async def svc() -> AsyncIterator[Services]:
    s = make_home()
    yield s
    drop_home(s)


def audit_codes(svc: Services) -> list[str]:
    return svc.store.read_sync(
        lambda db: [r[0] for r in db.execute("SELECT event_code FROM audit_events ORDER BY seq")]
    )


def team_members(svc: Services) -> dict[str, str]:
    def load(db):  # type: ignore[no-untyped-def]
        team = directory.team_by_address(db, TEAM)
        return {m.fingerprint: m.status for m in directory.members(db, team.id, status=None)}

    return svc.store.read_sync(load)


async def synced_with_een_and_twee(
    svc: Services, tmp_path: Path, keys: dict[str, GpgTestKey]
) -> tuple[Path, GpgTestKey, GpgTestKey]:
    """A reviewed key folder with team members Een and Twee, synced into the gateway."""
    een, twee = keys["een"], keys["twee"]
    folder = tmp_path / "keys"
    write_manifest(folder, {TEAM: [member(een, "Een"), member(twee, "Twee")]}, [een, twee])
    await keydir.sync(svc, folder, SYSTEM)
    return folder, een, twee


@pytest.mark.parametrize(
    ("change", "entry"),
    [
        ({"fingerprint": "ABCD"}, "member[1]: fingerprint"),
        ({"verified_by": ""}, "member[1]: verified_by"),
        ({"verified_at": "gisteren"}, "member[1]: verified_at"),
        ({"key": "../elsewhere.asc"}, "member[1]: key"),
        ({"key": "missing.asc"}, "member[1]: key"),
        ({"trust": "full"}, "member[1]"),
    ],
)
def test_manifest_error_names_the_entry(
    tmp_path: Path, keys: dict[str, GpgTestKey], change: dict[str, str], entry: str
) -> None:
    folder = write_manifest(tmp_path, {TEAM: [member(keys["een"], "Een") | change]}, [keys["een"]])
    with pytest.raises(ManifestError) as exc:
        load_manifest(folder)
    assert exc.value.context["entry"] == f"team[1] {TEAM}: {entry}"


def test_manifest_refuses_one_member_with_two_keys(
    tmp_path: Path, keys: dict[str, GpgTestKey]
) -> None:
    folder = write_manifest(
        tmp_path,
        {TEAM: [member(keys["een"], "Een"), member(keys["een_new"], "Een")]},
        [keys["een"], keys["een_new"]],
    )
    with pytest.raises(ManifestError, match="email listed more than once"):
        load_manifest(folder)


def test_folder_with_secret_key_material_is_refused(
    tmp_path: Path, keys: dict[str, GpgTestKey]
) -> None:
    folder = write_manifest(tmp_path, {TEAM: [member(keys["een"], "Een")]}, [keys["een"]])
    (folder / "oops.asc").write_text(keys["twee"].secret, encoding="ascii")
    with pytest.raises(ManifestError, match="oops.asc holds secret key material"):
        load_manifest(folder)
    # The same secret packets relabelled as a public key block are found on the packets.
    private = "PRIVATE " + "KEY BLOCK"  # split: secret-key scanners grep committed files
    disguised = keys["twee"].secret.replace(private, "PUBLIC KEY BLOCK")
    (folder / "oops.asc").write_text(disguised, encoding="ascii")
    with pytest.raises(ManifestError, match="secret key material"):
        load_manifest(folder)
    (folder / "oops.asc").unlink()
    (folder / "key.gpg").write_bytes(b"\x95\x01\x02")  # a binary key could hide anywhere
    with pytest.raises(ManifestError, match="only directory.toml"):
        load_manifest(folder)


async def test_sync_imports_exactly_the_pinned_keys(
    svc: Services, tmp_path: Path, keys: dict[str, GpgTestKey]
) -> None:
    # Given a key file holding two certificates, of which the manifest pins one
    een, stranger = keys["een"], keys["stranger"]
    folder = write_manifest(tmp_path, {TEAM: [member(een, "Een")]})
    (folder / f"{een.fingerprint[-8:]}.asc").write_text(een.public + stranger.public)
    # When the gateway syncs
    report = await keydir.sync(svc, folder, SYSTEM)
    # Then only the pinned key is in its keyring, active, and the import is audited
    assert report.imported == [een.fingerprint]
    assert (await svc.keyring.key_info(een.fingerprint)).fingerprint == een.fingerprint
    with pytest.raises(NotFoundError):
        await svc.keyring.key_info(stranger.fingerprint)
    assert team_members(svc) == {een.fingerprint: "active"}
    assert audit_codes(svc) == ["org.create", "team.create", "key.import"]
    # A second sync changes nothing
    again = await keydir.sync(svc, folder, SYSTEM)
    assert again.of(keydir.UNCHANGED) and not again.of(keydir.ADDED)
    assert len(audit_codes(svc)) == 3


async def test_sync_refuses_a_pin_that_is_not_in_its_key_file(
    svc: Services, tmp_path: Path, keys: dict[str, GpgTestKey]
) -> None:
    folder = write_manifest(tmp_path, {TEAM: [member(keys["een"], "Een")]})
    (folder / f"{keys['een'].fingerprint[-8:]}.asc").write_text(keys["twee"].public)
    with pytest.raises(ManifestError, match="is not in"):
        await keydir.sync(svc, folder, SYSTEM)
    assert audit_codes(svc) == []  # nothing changed


async def test_member_no_longer_in_the_manifest_is_removed_and_never_used(
    svc: Services, tmp_path: Path, keys: dict[str, GpgTestKey]
) -> None:
    folder, een, twee = await synced_with_een_and_twee(svc, tmp_path, keys)
    write_manifest(folder, {TEAM: [member(twee, "Twee")]}, [twee])
    report = await keydir.sync(svc, folder, SYSTEM)
    assert [c[3] for c in report.of(keydir.REMOVED)] == [een.fingerprint]
    assert team_members(svc) == {een.fingerprint: "removed", twee.fingerprint: "active"}
    team = svc.store.read_sync(lambda db: directory.team_by_address(db, TEAM))
    recipients, skipped = await exchange.usable_recipients(svc, team)
    assert recipients == [twee.fingerprint] and skipped == []
    with pytest.raises(RecipientKeyError) as exc:  # still in the keyring, but not pinned
        await keydir.require_pinned(svc, team, een.fingerprint, svc.now())
    assert exc.value.context["why"] == "not_pinned"


async def test_key_in_the_keyring_but_not_pinned_is_never_a_recipient(
    svc: Services, tmp_path: Path, keys: dict[str, GpgTestKey]
) -> None:
    een, stranger = keys["een"], keys["stranger"]
    await keydir.sync(svc, write_manifest(tmp_path, {TEAM: [member(een, "Een")]}, [een]), SYSTEM)
    # The stranger's key carries the member's very address and sits in the keyring
    await svc.keyring.import_keys(stranger.public)
    team = svc.store.read_sync(lambda db: directory.team_by_address(db, TEAM))
    recipients, _ = await exchange.usable_recipients(svc, team)
    assert recipients == [een.fingerprint]
    with pytest.raises(RecipientKeyError) as exc:
        await keydir.require_pinned(svc, team, stranger.fingerprint, svc.now())
    assert exc.value.context["why"] == "not_pinned"


async def test_changed_key_is_quarantined_until_the_phone_code_confirms_it(
    svc: Services, tmp_path: Path, keys: dict[str, GpgTestKey]
) -> None:
    folder, een, twee = await synced_with_een_and_twee(svc, tmp_path, keys)
    een_new = keys["een_new"]
    # When the manifest gives Een a new key
    write_manifest(folder, {TEAM: [member(een_new, "Een"), member(twee, "Twee")]}, [een_new, twee])
    report = await keydir.sync(svc, folder, SYSTEM)
    # Then the new key is quarantined, the old one removed, and Een is left out (told why)
    assert [c[3] for c in report.of(keydir.QUARANTINED)] == [een_new.fingerprint]
    assert team_members(svc)[een_new.fingerprint] == "quarantined"
    team = svc.store.read_sync(lambda db: directory.team_by_address(db, TEAM))
    recipients, skipped = await exchange.usable_recipients(svc, team)
    assert recipients == [twee.fingerprint]
    assert [(s["name"], s["why"]) for s in skipped] == [("Een", "quarantined")]

    def attempt(code: str) -> keydir.ConfirmOutcome:
        return svc.store.write_sync(
            lambda db: keydir.confirm(
                db,
                SYSTEM,
                email=een_new.email,
                fingerprint=een_new.fingerprint,
                code=code,
                now=svc.now_iso(),
            )
        )

    # A wrong code (here: the old key's) is refused, audited, and changes nothing
    wrong = attempt(phone_code(een.fingerprint))
    with pytest.raises(keydir.PhoneCodeError):
        wrong.raise_if_refused()
    assert team_members(svc)[een_new.fingerprint] == "quarantined"
    # The code read out over the phone, as a person might type it, releases the key
    spoken = phone_code(een_new.fingerprint).lower().replace("-", " ")
    assert phone_code_matches(een_new.fingerprint, spoken)
    attempt(spoken).raise_if_refused()
    assert team_members(svc)[een_new.fingerprint] == "active"
    recipients, skipped = await exchange.usable_recipients(svc, team)
    assert sorted(recipients) == sorted([een_new.fingerprint, twee.fingerprint])
    codes = audit_codes(svc)
    assert codes.count("key.quarantine") == 1 and codes.count("key.remove") == 1
    rows = svc.store.read_sync(
        lambda db: list(
            db.execute(
                "SELECT outcome FROM audit_events WHERE event_code = 'key.confirm' ORDER BY seq"
            )
        )
    )
    assert [r[0] for r in rows] == ["refused", "success"]


def test_the_committed_key_directory_is_valid_and_holds_no_secret_keys() -> None:
    folder = Path(__file__).resolve().parent.parent / "keys"
    manifest = load_manifest(folder)  # also checks every file for secret key material
    assert manifest.region


async def test_check_names_where_the_gateway_and_the_reviewed_directory_disagree(
    svc: Services, tmp_path: Path, keys: dict[str, GpgTestKey]
) -> None:
    folder, een, twee = await synced_with_een_and_twee(svc, tmp_path, keys)

    def drift() -> list[str]:
        return svc.store.read_sync(lambda db: keydir.drift(db, load_manifest(folder)))

    assert drift() == []  # in step after a sync
    # A reviewed change not yet synced: een leaves, twee's replacement is listed
    write_manifest(folder, {TEAM: [member(twee, "Twee")]}, [twee])
    [extra] = drift()
    assert een.fingerprint in extra and "does not list" in extra
    # and `securemail check` says so as a warning, not a reason to stop sending
    report = check_home(svc.settings.replace(gateway={"keys_dir": str(folder)}), svc.store)
    assert any(een.fingerprint in w for w in report.warnings)
    assert not any(een.fingerprint in p for p in report.problems)
    await keydir.sync(svc, folder, SYSTEM)
    assert drift() == []
    write_manifest(folder, {TEAM: [member(een, "Een"), member(twee, "Twee")]}, [een, twee])
    [missing] = drift()
    assert een.fingerprint in missing and "not synced" in missing
