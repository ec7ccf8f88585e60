"""Accounts, second factor, lockout, password reset, API tokens and the access policy,
against a real sqlite store (the HTTP-level refusals are in test_web_security.py)."""

from __future__ import annotations

import os
import stat
from datetime import timedelta

import pytest

from securemail import access
from securemail.access import SYSTEM, Actor, Person, Resource
from securemail.accounts import apitoken, auth, session, totp
from securemail.errors import AccessDeniedError, InputError, NotFoundError
from securemail.secretbox import KEY_FILE, SecretBox, SecretBoxError
from securemail.store import Store
from tests.auth_fixtures import PASSWORD, T0, actor, audit_rows, make_store, person

POLICY = totp.Lockout(max_failures=5, minutes=15)


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path)
    yield s
    s.close()


def verify(store: Store, username: str, code: str, now=T0):
    a = actor(store, username)
    return store.write_sync(
        lambda db: totp.verify_second_factor(db, a, code, now=now, policy=POLICY)
    )


# -- passwords ---------------------------------------------------------------------------


def test_password_hash_is_scrypt_and_salted():
    h1, h2 = auth.hash_password(PASSWORD), auth.hash_password(PASSWORD)
    assert h1.startswith("scrypt$32768$8$1$")
    assert h1 != h2
    assert auth.check_password(PASSWORD, h1)
    assert not auth.check_password(PASSWORD + "x", h1)
    assert not auth.check_password(PASSWORD, "md5$abc")


def test_a_team_mailbox_is_never_a_login(store):
    with pytest.raises(InputError) as info:
        store.write_sync(
            lambda db: auth.add_user(
                db,
                SYSTEM,
                username="team",
                name="Team Centrum",
                role="nurse",
                org_code="87000001",
                password=PASSWORD,
                email="centrum@zorg.example",
                teams=["centrum@zorg.example"],
                now=T0.isoformat(),
            )
        )
    assert info.value.context["field"] == "email"


# -- TOTP secrets at rest ----------------------------------------------------------------


def test_totp_secret_is_sealed_at_rest_and_key_file_is_private(store, tmp_path):
    gp = person(store, "gp_a")
    raw = (tmp_path / "securemail.db").read_bytes() + (tmp_path / "securemail.db-wal").read_bytes()
    assert gp.secret.encode() not in raw
    mode = stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode)
    assert mode == 0o600


def test_sealed_secret_does_not_open_for_another_user_or_key(store, tmp_path):
    gp = person(store, "gp_a")
    sealed = store.read_sync(
        lambda db: db.execute(
            "SELECT totp_secret FROM user_security WHERE user_id = ?", [gp.user_id]
        ).fetchone()[0]
    )
    box = SecretBox.load(tmp_path)
    assert box.open(sealed, context=f"totp:{gp.user_id}") == gp.secret
    with pytest.raises(SecretBoxError):
        box.open(sealed, context=f"totp:{gp.user_id + 1}")
    with pytest.raises(SecretBoxError):
        SecretBox(os.urandom(32)).open(sealed, context=f"totp:{gp.user_id}")


# -- enrolment -----------------------------------------------------------------------------


def test_enrolment_shows_qr_once_and_confirms_with_a_code(store):
    a = actor(store, "nurse_c")
    assert store.read_sync(lambda db: totp.needs_enrolment(db, a.user_id))
    enrol = store.write_sync(
        lambda db: totp.begin_enrolment(db, a.user_id, a.username, issuer="securemail", now=T0)
    )
    assert enrol.qr_data_uri.startswith("data:image/svg+xml")
    assert enrol.uri.startswith("otpauth://totp/securemail:nurse_c?secret=")
    code = totp.code_at(enrol.secret, totp.step_of(T0))
    codes = store.write_sync(lambda db: totp.confirm_enrolment(db, a, code, now=T0))
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(len(c) == 19 for c in codes)  # XXXX-XXXX-XXXX-XXXX
    assert not store.read_sync(lambda db: totp.needs_enrolment(db, a.user_id))
    assert [r["outcome_detail"] for r in audit_rows(store, "auth.totp_enrol")] == [
        "authenticator paired; recovery codes issued"
    ]
    # The code that confirmed enrolment cannot be replayed to log in.
    assert verify(store, "nurse_c", code).reason == "replayed"
    # Recovery codes are stored as hashes only.
    hashes = store.read_sync(lambda db: [r["code_hash"] for r in db["recovery_codes"].rows])
    assert not any(c.replace("-", "") in h for c in codes for h in hashes)


def test_enrolment_refuses_wrong_code_and_a_stale_qr(store):
    a = actor(store, "gp_a")
    enrol = store.write_sync(
        lambda db: totp.begin_enrolment(db, a.user_id, a.username, issuer="securemail", now=T0)
    )
    with pytest.raises(totp.SecondFactorError):
        store.write_sync(lambda db: totp.confirm_enrolment(db, a, "000000", now=T0))
    # A newer QR replaces the older one: its codes no longer enrol.
    store.write_sync(
        lambda db: totp.begin_enrolment(db, a.user_id, a.username, issuer="securemail", now=T0)
    )
    with pytest.raises(totp.SecondFactorError):
        store.write_sync(
            lambda db: totp.confirm_enrolment(
                db, a, totp.code_at(enrol.secret, totp.step_of(T0)), now=T0
            )
        )
    late = T0 + timedelta(minutes=totp.ENROL_MINUTES + 1)
    with pytest.raises(totp.EnrolmentExpiredError):
        store.write_sync(lambda db: totp.confirm_enrolment(db, a, "123456", now=late))


# -- second factor -------------------------------------------------------------------------


def test_totp_accepts_one_step_either_side_and_each_step_once(store):
    gp = person(store, "gp_a")
    now = T0 + timedelta(minutes=5)
    v = verify(store, "gp_a", gp.code(now, -1), now)
    assert (v.ok, v.method) == (True, "totp")
    assert verify(store, "gp_a", gp.code(now, -1), now).reason == "replayed"
    # An older step after a newer one is a replay too.
    assert verify(store, "gp_a", gp.code(now, +1), now).ok
    assert verify(store, "gp_a", gp.code(now, 0), now).reason == "replayed"
    assert verify(store, "gp_a", gp.code(now, +2), now).reason == "bad_code"
    assert [r["outcome_detail"] for r in audit_rows(store, "auth.login")] == [
        "password + totp",
        "password + totp",
    ]


def test_recovery_code_works_once_then_fails(store):
    a = actor(store, "privacy_a")
    enrol = store.write_sync(
        lambda db: totp.begin_enrolment(db, a.user_id, a.username, issuer="x", now=T0)
    )
    codes = store.write_sync(
        lambda db: totp.confirm_enrolment(
            db, a, totp.code_at(enrol.secret, totp.step_of(T0)), now=T0
        )
    )
    v = verify(store, "privacy_a", codes[3].lower().replace("-", " "))
    assert (v.ok, v.method, v.recovery_left) == (True, "recovery_code", 9)
    assert verify(store, "privacy_a", codes[3]).reason == "bad_recovery_code"
    renewed = store.write_sync(lambda db: totp.renew_recovery_codes(db, a, now=T0))
    assert verify(store, "privacy_a", codes[4]).reason == "bad_recovery_code"
    assert verify(store, "privacy_a", renewed[0]).ok


def test_lockout_after_max_failures_is_audited_and_blocks_right_codes(store):
    gp = person(store, "gp_a")
    for i in range(POLICY.max_failures - 1):
        assert verify(store, "gp_a", "000000", T0 + timedelta(seconds=i)).reason == "bad_code"
    v = verify(store, "gp_a", "000000", T0 + timedelta(seconds=10))
    assert v.reason == "locked"
    assert v.locked_until == T0 + timedelta(seconds=10, minutes=15)
    assert len(audit_rows(store, "auth.fail")) == POLICY.max_failures
    assert {r["outcome_detail"] for r in audit_rows(store, "auth.fail")} == {
        "second factor: wrong code"
    }
    (lock,) = audit_rows(store, "auth.lockout")
    assert lock["object_id"] == "gp_a"
    assert lock["outcome"] == "refused"
    # A right code during the lock is refused and does not extend it.
    during = T0 + timedelta(minutes=10)
    assert verify(store, "gp_a", gp.code(during), during).reason == "locked"
    assert store.read_sync(lambda db: totp.locked_until(db, gp.user_id, during)) == v.locked_until
    after = T0 + timedelta(minutes=16)
    assert verify(store, "gp_a", gp.code(after), after).ok


def test_password_failures_count_towards_the_same_lock(store):
    a = actor(store, "nurse_o")
    for _ in range(POLICY.max_failures):
        v = store.write_sync(
            lambda db: totp.register_failure(db, a, "bad_password", now=T0, policy=POLICY)
        )
    assert v.reason == "locked"
    assert store.read_sync(lambda db: totp.locked_until(db, a.user_id, T0)) is not None


def test_unenrolled_person_cannot_pass_the_second_factor(store):
    assert verify(store, "nurse_c", "123456").reason == "not_enrolled"


# -- admin actions ---------------------------------------------------------------------------


def test_admin_password_reset_forces_reenrolment_and_ends_sessions(store):
    gp = person(store, "gp_a")
    store.write_sync(lambda db: session.create(db, gp.user_id, now=T0))
    store.write_sync(lambda db: session.create(db, gp.user_id, now=T0))
    admin = actor(store, "admin")
    ended = store.write_sync(
        lambda db: auth.reset_password(db, admin, "gp_a", "a new long password")
    )
    assert ended == 2
    found = store.read_sync(lambda db: auth.find_user(db, "gp_a"))
    assert found is not None
    assert auth.check_password("a new long password", found[1])
    assert store.read_sync(lambda db: totp.needs_enrolment(db, gp.user_id))
    assert verify(store, "gp_a", gp.code(T0 + timedelta(minutes=1))).reason == "not_enrolled"
    (row,) = audit_rows(store, "user.update")
    assert row["user_name"] == "admin"
    assert "second factor to enrol again; 2 sessions ended" in row["outcome_detail"]


def test_only_an_admin_resets_passwords_or_unlocks(store):
    for name in ("gp_a", "nurse_c", "privacy_a"):
        a = actor(store, name)
        with pytest.raises(AccessDeniedError):
            store.write_sync(lambda db, a=a: auth.reset_password(db, a, "gp_b", "x" * 20))
        with pytest.raises(AccessDeniedError):
            store.write_sync(lambda db, a=a: auth.unlock(db, a, "gp_b"))
    with pytest.raises(InputError):
        store.write_sync(lambda db: auth.reset_password(db, actor(store, "admin"), "gp_b", "short"))


def test_admin_unlock_lifts_the_lock(store):
    a = actor(store, "gp_b")
    for _ in range(POLICY.max_failures):
        store.write_sync(
            lambda db: totp.register_failure(db, a, "bad_password", now=T0, policy=POLICY)
        )
    store.write_sync(lambda db: auth.unlock(db, actor(store, "admin"), "gp_b"))
    assert store.read_sync(lambda db: totp.locked_until(db, a.user_id, T0)) is None


# -- API tokens ------------------------------------------------------------------------------


def test_api_token_is_shown_once_stored_hashed_and_audited(store):
    gp = actor(store, "gp_a")
    token, row = store.write_sync(
        lambda db: apitoken.create(db, gp, name="HIS", scopes="request:send request:read", now=T0)
    )
    assert token.startswith("smk_")
    assert row.scopes == ("request:read", "request:send")
    stored = store.read_sync(lambda db: list(db["api_tokens"].rows))
    assert token not in str(stored)
    found = store.write_sync(lambda db: apitoken.authenticate(db, token, now=T0))
    assert found.user_id == gp.user_id
    (created,) = audit_rows(store, "auth.token")
    assert created["outcome_detail"].startswith(f"created {row.prefix}")


def test_api_token_refused_when_revoked_expired_or_unknown(store):
    gp = actor(store, "gp_a")
    token, row = store.write_sync(
        lambda db: apitoken.create(db, gp, name="HIS", scopes=["request:read"], now=T0, days=1)
    )
    with pytest.raises(apitoken.TokenInvalidError):
        store.write_sync(lambda db: apitoken.authenticate(db, token, now=T0 + timedelta(days=2)))
    with pytest.raises(apitoken.TokenInvalidError):
        store.write_sync(lambda db: apitoken.authenticate(db, token + "x", now=T0))
    store.write_sync(lambda db: apitoken.revoke(db, gp, row.id, now=T0))
    with pytest.raises(apitoken.TokenInvalidError):
        store.write_sync(lambda db: apitoken.authenticate(db, token, now=T0))


def test_api_tokens_are_a_gp_practice_matter(store):
    token_row = store.write_sync(
        lambda db: apitoken.create(
            db, actor(store, "gp_a"), name="HIS", scopes="request:send", now=T0
        )
    )[1]
    # Another GP of the same practice may revoke it; a GP of another practice sees nothing.
    with pytest.raises(NotFoundError):
        store.write_sync(lambda db: apitoken.revoke(db, actor(store, "gp_b"), token_row.id, now=T0))
    for name in ("nurse_c", "privacy_a", "admin"):
        with pytest.raises(AccessDeniedError):
            store.write_sync(
                lambda db, name=name: apitoken.create(
                    db, actor(store, name), name="x", scopes="request:send", now=T0
                )
            )
    store.write_sync(lambda db: apitoken.revoke(db, actor(store, "gp_a2"), token_row.id, now=T0))
    with pytest.raises(InputError):
        store.write_sync(
            lambda db: apitoken.create(
                db, actor(store, "gp_a"), name="x", scopes="admin:everything", now=T0
            )
        )


# -- the policy ------------------------------------------------------------------------------


def _actor(role: str, org: int | None = 1, teams=(), token_actions=None) -> Actor:
    return Person(
        user_id=7,
        username="u",
        name="U",
        role=role,
        org_id=org,
        team_ids=frozenset(teams),
        token_actions=token_actions,
    )


REQUEST_OF_ORG1_TO_TEAM5 = Resource("request", org_id=1, team_ids=frozenset({5}))


@pytest.mark.parametrize(
    ("who", "action", "resource", "allowed"),
    [
        (_actor("gp"), "request.view", REQUEST_OF_ORG1_TO_TEAM5, True),
        (_actor("gp", org=2), "request.view", REQUEST_OF_ORG1_TO_TEAM5, False),
        (_actor("nurse", org=3, teams={5}), "request.view", REQUEST_OF_ORG1_TO_TEAM5, True),
        (_actor("nurse", org=3, teams={6}), "request.view", REQUEST_OF_ORG1_TO_TEAM5, False),
        (_actor("nurse", org=3, teams={5}), "request.send", Resource("request", org_id=3), False),
        (_actor("nurse", org=3, teams={5}), "request.list", Resource("request"), True),
        (_actor("privacy_officer"), "request.view", REQUEST_OF_ORG1_TO_TEAM5, False),
        (_actor("privacy_officer"), "audit.view", Resource("audit", org_id=1), True),
        (_actor("privacy_officer", org=2), "audit.view", Resource("audit", org_id=1), False),
        (_actor("admin", org=None), "request.view", REQUEST_OF_ORG1_TO_TEAM5, False),
        (_actor("admin", org=None), "audit.view", Resource("audit", org_id=1), False),
        (_actor("admin", org=None), "user.manage", Resource("user"), True),
        (_actor("gp"), "user.manage", Resource("user"), False),
        (_actor("gp", org=None), "request.send", Resource("request"), False),
        (_actor("gp"), "account.self", Resource("account", ref="7"), True),
        (_actor("gp"), "account.self", Resource("account", ref="8"), False),
        (
            _actor("gp", token_actions=frozenset({"request.status"})),
            "request.send",
            Resource("request", org_id=1),
            False,
        ),
        (
            _actor("gp", token_actions=frozenset({"request.send"})),
            "request.send",
            Resource("request", org_id=1),
            True,
        ),
        (_actor("gp"), "no.such.action", Resource("request", org_id=1), False),
        (SYSTEM, "directory.manage", Resource("directory"), True),
    ],
)
def test_policy_table(who, action, resource, allowed):
    assert access.is_allowed(who, action, resource) is allowed


def test_hidden_refusal_looks_exactly_like_not_found():
    with pytest.raises(NotFoundError) as hidden:
        access.require(
            _actor("gp", org=2),
            "request.view",
            Resource("request", org_id=1, ref="UVZ-2025-000001"),
            hide=True,
        )
    genuine = NotFoundError("request not found")
    assert (hidden.value.code, hidden.value.http_status, hidden.value.message_nl()) == (
        genuine.code,
        genuine.http_status,
        genuine.message_nl(),
    )
    assert hidden.value.context == {}


def test_every_api_scope_opens_only_known_actions():
    for actions in apitoken.SCOPES.values():
        assert actions <= set(access.POLICY)


def test_session_ids_are_hashed_and_rotate(store):
    gp = person(store, "gp_a")
    sid1, s1 = store.write_sync(lambda db: session.create(db, gp.user_id, now=T0))
    sid2, _ = store.write_sync(lambda db: session.create(db, gp.user_id, now=T0))
    assert sid1 != sid2
    rows = store.read_sync(lambda db: [r["id_hash"] for r in db["sessions"].rows])
    assert sid1 not in rows
    assert s1.id_hash in rows
    idle, absolute = timedelta(minutes=15), timedelta(hours=8)

    def load(now):
        return store.read_sync(
            lambda db: session.load(db, sid1, now=now, idle=idle, absolute=absolute)
        )

    assert load(T0 + timedelta(minutes=14)) is not None
    assert load(T0 + timedelta(minutes=16)) is None
