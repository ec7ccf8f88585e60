"""The one text policy (securemail.form.fields.clean_text) on the inputs outside the form:
the admin's (account pages and CLI), the directory and region map (web and CLI, the key
directory's manifest) and the consent register (web and CLI).

The promise, property-based (hypothesis): a NUL, a control character, a bidi override or
an overlong text in any of these inputs is refused with a clear error naming the field
(Dutch on a page, English on the command line), and nothing is written: no row, no audit
row. Each input path has one gate (form.fields.require_text or clean_text), so the web and
the CLI cannot drift apart.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemail.cli import main
from securemail.form.fields import TextInputError, require_text
from securemail.keys.manifest import ManifestError, _text
from securemail.region import directory
from tests.gateway import copy_template, kill_agents, scratch_dir
from tests.test_fuzz_routes import Running, serve

EXAMPLES = 12
#: What an attacker puts into a name: NUL, an escape, DEL, C1, the bidi overrides and
#: isolates, a line separator, a line break (one-line fields).
BAD_CHARS = ["\x00", "\x1b", "\x7f", "\x85", "\u202a", "\u202e", "\u2066", "\u2069", "\u2028"]
LETTERS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzéë ", max_size=10)
SLOW = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def bad_text(limit: int, *, line_break: bool = True) -> st.SearchStrategy[str]:
    """A text the policy refuses: a forbidden character inside ordinary letters (so trimming
    cannot remove it), or one more character than ``limit`` allows (and then some)."""
    chars = BAD_CHARS + (["\n", "\t"] if line_break else [])
    inside = st.builds(
        lambda a, c, b: "a" + a + c + b + "z", LETTERS, st.sampled_from(chars), LETTERS
    )
    overlong = st.integers(limit + 1, limit + 200).map(lambda n: "x" * n)
    return inside | overlong


# -- the gate itself ---------------------------------------------------------------------------


@given(value=st.text(max_size=80), multiline=st.booleans())
def test_require_text_returns_clean_bounded_nfc_text_or_refuses(
    value: str, multiline: bool
) -> None:
    try:
        text = require_text("name", value, max_length=40, multiline=multiline)
    except TextInputError as exc:
        assert exc.context["field"] == "name"
        return
    assert len(text) <= 40 and text == text.strip()
    assert text == unicodedata.normalize("NFC", text)
    assert not any(c in text for c in BAD_CHARS)
    assert multiline or ("\n" not in text and "\t" not in text)


@given(value=bad_text(40))
def test_require_text_refuses_every_bad_text_naming_the_field_not_the_text(value: str) -> None:
    with pytest.raises(TextInputError) as info:
        require_text("name", value, max_length=40)
    assert "name" in info.value.reason and value not in info.value.reason
    assert "name" in info.value.message_nl() and "tekens" in info.value.message_nl()


@given(value=bad_text(200))
def test_the_key_directory_manifest_refuses_bad_names_before_any_import(value: str) -> None:
    with pytest.raises(ManifestError) as info:
        _text("team[1]: member[1]", {"name": value}, "name")
    assert "team[1]: member[1]: name" in info.value.reason


# -- the web: admin, region map, consent register ----------------------------------------------


@pytest.fixture(scope="module")
def running(web_template: tuple[Path, dict[str, str]]) -> Iterator[Running]:
    yield from serve(web_template)


def table_counts(running: Running, *tables: str) -> tuple[int, ...]:
    def read(db: Any) -> tuple[int, ...]:
        return tuple(db[t].count for t in (*tables, "audit_events"))

    return running.webapp.svc.store.read_sync(read)


def hashes(running: Running) -> dict[str, str]:
    rows = running.webapp.svc.store.read_sync(
        lambda db: list(db.execute("SELECT username, password_hash FROM users"))
    )
    return dict(rows)


def test_admin_page_refuses_bad_usernames_and_passwords_in_dutch_writing_nothing(
    running: Running,
) -> None:
    admin = running.browsers["admin"]
    before, audit = hashes(running), table_counts(running)

    @SLOW
    @given(
        case=st.one_of(
            bad_text(63).map(lambda u: ("reset", u, "a-good-new-password")),
            bad_text(63).map(lambda u: ("unlock", u, "")),
            st.sampled_from(["\x00", "\x1b", "\n"]).map(
                lambda c: ("reset", "gp_a", "a-good-new" + c + "password")
            ),
            st.integers(1025, 1300).map(lambda n: ("reset", "gp_a", "p" * n)),
        )
    )
    def attempt(case: tuple[str, str, str]) -> None:
        action, username, password = case
        path = "/admin/users/reset-password" if action == "reset" else "/admin/users/unlock"
        r = running.run(admin.post(path, {"username": username, "password": password}))
        assert 400 <= r.status < 500, (r.status, r.text[:300])
        assert "Ongeldige" in r.text  # the Dutch error on the admin page
        assert hashes(running) == before and table_counts(running) == audit

    attempt()


def test_region_map_refuses_bad_text_in_every_typed_field_in_dutch_writing_nothing(
    running: Running,
) -> None:
    nurse, gp = running.browsers["nurse_c"], running.browsers["gp_a"]
    team_id = running.webapp.svc.store.read_sync(
        lambda db: directory.team_by_address(db, "centrum@zorg.example").id
    )
    good = {"phone": "0201111111", "areas": "1011-1018", "capacity": "ja"}
    before = table_counts(running, "team_map", "practice_entry", "contact_nurses")

    @SLOW
    @given(
        case=st.one_of(
            st.tuples(st.just("team"), st.just("phone"), bad_text(40)),
            st.tuples(st.just("team"), st.just("phone_nacht"), bad_text(40)),
            st.tuples(st.just("team"), st.just("address_avond"), bad_text(254)),
            st.tuples(st.just("team"), st.just("areas"), bad_text(2000, line_break=False)),
            st.tuples(st.just("practice"), st.just("name"), bad_text(100)),
            st.tuples(st.just("practice"), st.just("phone"), bad_text(40)),
        )
    )
    def attempt(case: tuple[str, str, str]) -> None:
        page, field, value = case
        if page == "team":
            r = running.run(nurse.post(f"/regio/team/{team_id}", {**good, field: value}))
        else:
            data = {"role": "poh", "name": "P. Ondersteuner", "phone": "0203333333"}
            r = running.run(gp.post("/regio/praktijk", {**data, field: value}))
        assert r.status == 422, (field, r.status, r.text[:300])
        assert f'data-field="{field}"' in r.text, field
        assert "tekens" in r.text or "telefoonnummer" in r.text or "postcode" in r.text
        after = table_counts(running, "team_map", "practice_entry", "contact_nurses")
        assert after == before

    attempt()


def test_consent_register_refuses_bad_text_in_dutch_next_to_the_field_writing_nothing(
    running: Running,
) -> None:
    gp = running.browsers["gp_a"]
    base = {
        "bsn": "111222333",
        "recipient": "category:wijkverpleging",
        "decision": "permit",
        "channel": "in_person",
        "performer": "representative",
        "performer_name": "J. Jansen",
    }
    before = table_counts(running, "consents")

    @SLOW
    @given(
        case=st.one_of(
            st.tuples(st.just("performer_name"), bad_text(500)),
            st.tuples(st.just("evidence_ref"), bad_text(255)),
        )
    )
    def attempt(case: tuple[str, str]) -> None:
        field, value = case
        r = running.run(gp.post("/consents/record", {**base, field: value}))
        assert r.status == 422, (field, r.status, r.text[:300])
        assert f'data-field="{field}"' in r.text and "Er is niets vastgelegd" in r.text
        assert "stuur" in r.text  # the Dutch field error names the refused characters
        # consent.view of the page shown again is the only row the audit trail gains
        consents, _ = table_counts(running, "consents")
        assert consents == before[0]

    attempt()


# -- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(web_template: tuple[Path, dict[str, str]]) -> Iterator[Path]:
    root, _ = web_template
    h = copy_template(root, scratch_dir("smt-") / "home")
    yield h
    kill_agents(h / "gnupg")
    shutil.rmtree(h.parent, ignore_errors=True)


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def counts(home: Path) -> tuple[int, ...]:
    with contextlib.closing(sqlite3.connect(home / "securemail.db")) as db:
        return tuple(
            db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 (fixed names)
            for t in ("users", "organisations", "teams", "team_map", "consents", "audit_events")
        )


def test_cli_refuses_bad_text_in_english_naming_the_option_writing_nothing(home: Path) -> None:
    h = str(home)
    secret = home.parent / "pw"
    secret.write_text("a-good-new-password\n", encoding="utf-8")
    before = counts(home)
    commands = {
        "org": lambda v: ("org", "add", "--code", "01000009", "--kind", "practice", "--name", v),
        "team": lambda v: (
            "team", "add", "--org", "87000001", "--name", v, "--address", "new@zorg.example",
        ),
        "user-name": lambda v: (
            "user", "add", "--username", "new_nurse", "--name", v, "--role", "admin",
            "--password-file", str(secret),
        ),
        "user-phone": lambda v: (
            "user", "add", "--username", "new_gp", "--name", "Dr. Nieuw", "--role", "admin",
            "--phone", v, "--password-file", str(secret),
        ),
        "reset": lambda v: (
            "account", "reset-password", "--username", v, "--password-file", str(secret),
        ),
        "region": lambda v: (
            "region", "team", "centrum@zorg.example", "--phone", v, "--areas", "1011",
            "--capacity", "ja",
        ),
        "consent": lambda v: (
            "consent", "grant", "--patient", "111222333", "--as", "gp_a", "--recipient",
            "wijkverpleging", "--representative", v,
        ),
    }  # fmt: skip
    # `securemail region` names the option (input.invalid: --phone: ...)
    expect = {"region": "--phone", "consent": "consent.invalid"}
    limits = {"reset": 63, "user-phone": 40, "region": 40, "consent": 500}

    @SLOW
    @given(which=st.sampled_from(sorted(commands)), bad=bad_text(0), extra=st.integers(1, 99))
    def attempt(which: str, bad: str, extra: int) -> None:
        # a forbidden character inside letters, or one character more than the option takes
        value = bad if not bad.startswith("x") else "x" * (limits.get(which, 200) + extra)
        code, err = run_cli(*commands[which](value), "--home", h)
        assert code == 1, (which, err)
        assert err.startswith("error: "), err
        assert expect.get(which, "input.") in err, (which, err)
        assert value not in err and "Traceback" not in err
        assert err.isascii() or all(c not in err for c in BAD_CHARS)
        assert counts(home) == before, which

    attempt()


def test_a_gp_whose_signing_passphrase_is_refused_is_not_added(home: Path) -> None:
    # The passphrase is checked before the account is written: no GP is left without a key.
    secret, short = home.parent / "pw", home.parent / "short"
    secret.write_text("a-good-new-password\n", encoding="utf-8")
    short.write_text("kort\n", encoding="utf-8")
    before = counts(home)
    code, err = run_cli(
        "user", "add", "--home", str(home), "--username", "new_gp2", "--name", "Dr. Twee",
        "--role", "gp", "--org", "01000001", "--password-file", str(secret),
        "--signing-passphrase-file", str(short),
    )  # fmt: skip
    assert code != 0 and "passphrase" in err and "Traceback" not in err
    assert counts(home) == before
