"""Who may do what: role and organisation scoping, decided in this one place.

Every route and every CLI command that touches patient data or administration asks
``require(actor, action, resource)``. A refusal raises AccessDeniedError (or
HiddenDeniedError, a NotFoundError, where admitting that the object exists would itself
leak); the web error middleware writes every refusal to the audit trail
(``access.denied``).

Two layers, one table: a web route declares its action and the middleware asks
``require_role`` before the handler runs (may this role, with these token scopes, ever do
this?); the domain function then asks ``require`` with the object's organisation and
teams (may this person do it to *this* object?). Both read ``POLICY``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar

from securemail.errors import AccessDeniedError, NotFoundError

ROLES = ("gp", "nurse", "privacy_officer", "admin", "coordinator", "assistant")

#: Code systems for roles (NEN 7513 asks for the user's role coded, not only named). Care
#: professions carry their UZI role code (the UZI register's "rolcode", as the Dutch FHIR
#: profiles name it); roles without one (gateway functions) use the local system, whose
#: codes are the role names themselves (docs/audit.md lists both).
UZI_ROLE_SYSTEM = "http://fhir.nl/fhir/NamingSystem/uzi-rolcode"
LOCAL_ROLE_SYSTEM = "urn:securemail:role"
ROLE_CODES: dict[str, tuple[str, str, str]] = {
    "gp": (UZI_ROLE_SYSTEM, "01.015", "Huisarts"),
    "nurse": (UZI_ROLE_SYSTEM, "30.000", "Verpleegkundige"),
    "privacy_officer": (LOCAL_ROLE_SYSTEM, "privacy_officer", "Privacyfunctionaris"),
    "admin": (LOCAL_ROLE_SYSTEM, "admin", "Beheerder gateway"),
    "coordinator": (LOCAL_ROLE_SYSTEM, "coordinator", "Regiocoördinator"),
    # The practice assistant (doktersassistent) or POH: no UZI role code of its own here.
    "assistant": (LOCAL_ROLE_SYSTEM, "assistant", "Doktersassistent / POH"),
    "system": (LOCAL_ROLE_SYSTEM, "system", "Gateway (systeem)"),
}


def role_code(role: str) -> str:
    """The coded role as one token ``system|code`` (FHIR token notation); "" if unknown."""
    coded = ROLE_CODES.get(role)
    return f"{coded[0]}|{coded[1]}" if coded else ""


#: How an actor reached the gateway (NEN 7513 "toegangspunt", typed): the browser portal,
#: the API with a token, the command line on the server, or the gateway's own processes.
ACCESS_POINT_TYPES = ("web", "api", "cli", "worker")


@dataclass(frozen=True, slots=True)
class Person:
    """A natural person acting, for which organisation, from where."""

    user_id: int
    username: str
    name: str
    role: str
    #: None only for the operator (role admin), who belongs to no organisation.
    org_id: int | None
    org_code: str = ""  # AGB/URA of the organisation, for audit rows
    team_ids: frozenset[int] = field(default_factory=frozenset)
    access_point: str = "cli"
    #: Acting through an API token: the only actions its scopes open (None: a person's session).
    token_actions: frozenset[str] | None = None
    #: The GP under whose responsibility this person acts (a practice assistant): every audit
    #: row of theirs names both (NEN 7513 "verantwoordelijke gebruiker" and the actor).
    responsible_user_id: int | None = None
    is_system: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class System:
    """The gateway itself (delivery, deadline watch, retention, init): no person, no
    organisation; it may do everything the code asks of it (is_allowed). The CLI replaces
    access_point with ``cli@host``."""

    username: str = "system"
    name: str = "securemail"
    role: str = "system"
    access_point: str = "worker"
    user_id: None = None
    org_id: None = None
    org_code: str = ""
    team_ids: frozenset[int] = field(default_factory=frozenset)
    token_actions: None = None
    is_system: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """A person known to the gateway only by a pinned key (a team member replying from her
    own mail client): named in the trail by the key's name and address, with no account
    here, so no user id, no session and no token; never a ``person()``."""

    username: str
    name: str
    role: str
    org_id: int
    org_code: str = ""
    team_ids: frozenset[int] = field(default_factory=frozenset)
    access_point: str = "smtp"
    user_id: None = None
    token_actions: None = None
    is_system: ClassVar[bool] = False


#: Who acts: a person with an account, one known by a pinned key, or the gateway (SYSTEM).
Actor = Person | System | KeyHolder

SYSTEM = System()


def access_point_type(access_point: str, *, token: bool = False) -> str:
    """The type of an access point as recorded: ``api`` for a token, ``cli`` for
    ``cli@host``, ``worker`` for the gateway itself, else ``web`` (a client address)."""
    if token:
        return "api"
    if access_point == "cli" or access_point.startswith("cli@"):
        return "cli"
    if access_point in ("", "worker"):
        return "worker"
    return "web"


def person(actor: Actor) -> Person:
    """``actor`` as the person it must be here; AccessDeniedError for the gateway itself."""
    if isinstance(actor, Person):
        return actor
    raise AccessDeniedError("this needs a person, not the gateway itself")


def org_of(actor: Actor) -> int:
    """The organisation ``actor`` acts for; AccessDeniedError for an actor without one (the
    operator, the gateway), so an organisation's data is never read under a made-up id."""
    if actor.org_id is None:
        raise AccessDeniedError(f"{actor.role} acts for no organisation")
    return actor.org_id


@dataclass(frozen=True, slots=True)
class Resource:
    """What an action is about: the organisations that own or receive it."""

    kind: str  # "request", "patient", "audit", "consent", "directory", "ask"
    org_id: int | None = None  # owning organisation (the practice for a request)
    team_ids: frozenset[int] = field(default_factory=frozenset)  # receiving team(s)
    receiver_org_ids: frozenset[int] = field(default_factory=frozenset)
    ref: str = ""  # the object's id for the audit row of a refusal (a reference, never a BSN)


class HiddenDeniedError(NotFoundError):
    """A refusal that answers exactly like 'not found' (same code, text, status), because
    admitting that the object exists would leak; it still names the refused action for the
    audit row, in attributes that never reach the response."""

    def __init__(self, kind: str, *, action: str, ref: str) -> None:
        super().__init__(f"{kind} not found")
        self.action = action
        self.kind = kind
        self.ref = ref


#: action -> roles that may attempt it; the scope rule below then narrows by organisation.
POLICY: dict[str, frozenset[str]] = {
    # The practice assistant (doktersassistent/POH) prepares: the form, its checks and drafts;
    # only a GP signs and sends (request.send).
    "request.create": frozenset({"gp", "assistant"}),
    "request.send": frozenset({"gp"}),
    "request.view": frozenset({"gp", "nurse"}),
    # Read an earlier request of the practice to prepare its change, extension or copy. The
    # assistant works under the GP's responsibility in the same treatment relationship (WGBO
    # 7:457 lid 2, those taking part in carrying out the treatment): she reads what she
    # prepares the follow-up of, audited with her as the actor and the GP as responsible.
    "request.prepare": frozenset({"gp", "assistant"}),
    "request.list": frozenset({"gp", "nurse"}),
    "request.answer": frozenset({"nurse"}),
    "request.withdraw": frozenset({"gp"}),
    # The team that accepted an order ends it (care ended, patient moved or died, competence
    # gone); the GP is told. Scoped to the request's team like request.answer.
    "order.end": frozenset({"nurse"}),
    # "Voor het dossier": the answered request as PDF and JSON for the practice's own record
    # (its GPs, its HIS token); the team files its own copy from its sealed mail.
    "request.record": frozenset({"gp"}),
    # A half-filled request form kept for the practice (securemail.exchange.drafts)
    "draft.save": frozenset({"gp", "assistant"}),
    "draft.view": frozenset({"gp", "assistant"}),
    "ask.create": frozenset({"nurse"}),
    "ask.view": frozenset({"gp", "nurse"}),
    "ask.answer": frozenset({"gp"}),
    # The conversation on a request or ask (securemail.exchange.thread): its practice (GP,
    # assistant) and the nurses of the team it is with now.
    "thread.read": frozenset({"gp", "assistant", "nurse"}),
    "thread.post": frozenset({"gp", "assistant", "nurse"}),
    "consent.record": frozenset({"gp", "assistant"}),
    "consent.withdraw": frozenset({"gp", "assistant"}),
    "consent.view": frozenset({"gp", "privacy_officer", "assistant"}),
    "audit.view": frozenset({"privacy_officer"}),
    "audit.export": frozenset({"privacy_officer"}),
    # The patient's disclosure report (Wabvpz art. 15e) as a PDF to hand over.
    "privacy.disclosure_pdf": frozenset({"privacy_officer"}),
    "audit.verify": frozenset({"privacy_officer", "admin"}),
    "directory.manage": frozenset({"admin"}),
    # The GPs' public signing keys, to check a GP's signature (no patient data).
    "directory.view": frozenset({"gp", "nurse"}),
    "outbox.manage": frozenset({"admin"}),
    "request.status": frozenset({"gp"}),
    "token.manage": frozenset({"gp"}),
    "user.manage": frozenset({"admin"}),
    # The regional map: the region page is for everyone logged in (and, with
    # [region] public_page, for anyone); a nurse keeps her own teams' entries, a GP her
    # practice's entry and preferred providers.
    "region.view": frozenset(ROLES),
    "region.team_edit": frozenset({"nurse"}),
    "region.practice_edit": frozenset({"gp"}),
    # Aggregate, suppressed figures without patient data (docs/adherence.md): the region's
    # coordinators, and the gateway operator who also has them on the CLI. Nothing else is
    # open to a coordinator: no request, ask, consent or audit action names the role.
    "adherence.view": frozenset({"coordinator", "admin"}),
    # A person's own account: second factor, recovery codes, sessions ("logout everywhere").
    "account.self": frozenset(ROLES),
}

#: The authorisation protocol's identity (NEN 7513: which protocol allowed the access),
#: recorded on every audit row. Whenever POLICY or ADMIN_KINDS changes, add a version
#: here with the new digest (tests/test_audit_policy.py refuses a change without one); a
#: version once published never changes its digest.
POLICY_ID = "securemail.access.policy"
POLICY_HISTORY: dict[str, str] = {
    "1": "7c86ed2780dc34000329210aedbb427b44bcf687345e4615e159d7bb09b8ab0b",
    # 2: ask.answer, a GP answers a nurse's consult or home-visit ask
    "2": "ba8a596bc9da08e071163b266315daba3f9d634be9694458bc3ffa1dcb49e315",
    # 3: request.record, the practice downloads a request "voor het dossier"
    "3": "b830617c4f11c055527bad4b4ddc0256f2b9563d25fe61ee01a7cb9798e5062e",
    # 4: draft.save and draft.view, a practice's unsent request forms; the practice assistant
    #    (assistant: prepares requests and drafts, records and withdraws consents)
    "4": "7e2c33de0b02c3dabebf12669f08722b71a9b28c7b5cb2834fb0a7ffd6a6a4d2",
    # 5: thread.read and thread.post, the conversation on a request or ask: its practice (GP,
    #    assistant) and the nurses of the team it is with now
    "5": "fcbd3522061add725e01a487b9cc245ea4974339165c4ef19aed5c000ab744fb",
    # 6: order.end, the team that accepted an order ends it with a reason for the GP
    "6": "afd84fcae907f0680181992de44bfcccf796e6d7b0c7045f4f291d1dc740c9ea",
    # 7: privacy.disclosure_pdf, the officer downloads the patient's disclosure report
    "7": "29552adf0ecb324f2da204e306cf543914bbff1d1d34d919fb5a5138199b62f9",
    # 8: request.prepare, the practice's GPs and assistants read an earlier request to start
    #    its change, extension or copy from it (the assistant saves it as a draft for a GP)
    "8": "9eb127bba7bac724982d42e1255f3f767082967874f6b45b4606af1d52e069c9",
}
POLICY_VERSION = "8"

#: Resource kinds only the gateway operator manages; no organisation scope applies.
ADMIN_KINDS = frozenset({"directory", "outbox", "user"})


def policy_digest(
    policy: dict[str, frozenset[str]] | None = None, admin_kinds: frozenset[str] | None = None
) -> str:
    """SHA-256 over the canonical JSON of the role table and the operator-only kinds."""
    table = POLICY if policy is None else policy
    kinds = ADMIN_KINDS if admin_kinds is None else admin_kinds
    body = {
        "policy": {action: sorted(roles) for action, roles in sorted(table.items())},
        "admin_kinds": sorted(kinds),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def policy_is_versioned() -> bool:
    """True when the policy in force is the one its version's digest names."""
    return POLICY_HISTORY.get(POLICY_VERSION) == policy_digest()


def is_allowed(actor: Actor, action: str, resource: Resource) -> bool:
    """True when actor may do action on resource; never raises for a 'no'."""
    if actor.is_system:
        return True
    if not is_role_allowed(actor, action):
        return False
    if resource.kind in ADMIN_KINDS:
        return actor.role == "admin"
    if resource.kind == "account":
        return resource.ref == str(actor.user_id)
    if resource.kind == "adherence":
        # Region-wide figures: one gateway serves one region; no organisation owns them.
        return True
    if actor.org_id is None:
        return False
    if actor.role == "nurse" and resource.kind in {"request", "ask", "thread"}:
        if resource.org_id is None and not resource.team_ids:
            # Lists: the caller scopes the query to actor.team_ids itself.
            return True
        # A nurse sees what was addressed to one of her teams, nothing else.
        return bool(actor.team_ids & resource.team_ids)
    if resource.kind == "team_entry":
        # A team's map entry is kept by the team's own nurses, nobody else's.
        return bool(actor.team_ids & resource.team_ids)
    if actor.role == "gp" and resource.kind == "ask":
        return resource.org_id == actor.org_id
    if resource.kind == "thread":
        # Always about one request or ask: its own practice, never a list without an owner.
        return resource.org_id is not None and resource.org_id == actor.org_id
    if resource.org_id is None:
        # Lists and searches: the caller scopes the query to actor.org_id itself.
        return True
    return resource.org_id == actor.org_id


def is_role_allowed(actor: Actor, action: str) -> bool:
    """May this role (and, through a token, these scopes) ever do action? Objects aside."""
    if actor.is_system:
        return True
    roles = POLICY.get(action)
    if roles is None or actor.role not in roles:
        return False
    if actor.token_actions is not None and action not in actor.token_actions:
        return False
    # Everyone but the gateway operator acts for an organisation; no organisation, no access.
    return actor.role == "admin" or actor.org_id is not None


def require_role(actor: Actor, action: str) -> None:
    """The route-level gate: raise AccessDeniedError unless the role may do action at all."""
    if not is_role_allowed(actor, action):
        raise AccessDeniedError(
            f"{actor.role} {actor.username} may not {action}", action=action, role=actor.role
        )


def require(actor: Actor, action: str, resource: Resource, *, hide: bool = False) -> None:
    """Raise unless allowed; with hide=True a refusal looks like 'not found' (404)."""
    if is_allowed(actor, action, resource):
        return
    if hide:
        raise HiddenDeniedError(resource.kind, action=action, ref=resource.ref)
    raise AccessDeniedError(
        f"{actor.role} {actor.username} may not {action}",
        action=action,
        role=actor.role,
        object_type=resource.kind,
        object_id=resource.ref or None,
    )
