"""Who may do what: role and organisation scoping, decided in this one place.

Every route and every CLI command that touches patient data or administration asks
``require(actor, action, resource)``. A refusal raises AccessDeniedError (or
NotFoundError where admitting that the object exists would itself leak); the caller
writes the refusal to the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from securemail.errors import AccessDeniedError, NotFoundError

ROLES = ("gp", "nurse", "privacy_officer", "admin")


@dataclass(frozen=True, slots=True)
class Actor:
    """The natural person acting, for which organisation, from where."""

    user_id: int | None
    username: str
    name: str
    role: str
    org_id: int | None
    org_code: str = ""  # AGB/URA of the organisation, for audit rows
    team_ids: frozenset[int] = field(default_factory=frozenset)
    access_point: str = "cli"

    @property
    def is_system(self) -> bool:
        return self.user_id is None


SYSTEM = Actor(user_id=None, username="system", name="securemail", role="system", org_id=None)


@dataclass(frozen=True, slots=True)
class Resource:
    """What an action is about: the organisations that own or receive it."""

    kind: str  # "request", "patient", "audit", "consent", "directory", "ask"
    org_id: int | None = None  # owning organisation (the practice for a request)
    team_ids: frozenset[int] = field(default_factory=frozenset)  # receiving team(s)
    receiver_org_ids: frozenset[int] = field(default_factory=frozenset)


#: action -> roles that may attempt it; the scope rule below then narrows by organisation.
POLICY: dict[str, frozenset[str]] = {
    "request.create": frozenset({"gp"}),
    "request.send": frozenset({"gp"}),
    "request.view": frozenset({"gp", "nurse"}),
    "request.list": frozenset({"gp", "nurse"}),
    "request.answer": frozenset({"nurse"}),
    "request.withdraw": frozenset({"gp"}),
    "ask.create": frozenset({"nurse"}),
    "ask.view": frozenset({"gp", "nurse"}),
    "consent.record": frozenset({"gp"}),
    "consent.withdraw": frozenset({"gp"}),
    "consent.view": frozenset({"gp", "privacy_officer"}),
    "audit.view": frozenset({"privacy_officer"}),
    "audit.export": frozenset({"privacy_officer"}),
    "audit.verify": frozenset({"privacy_officer", "admin"}),
    "directory.manage": frozenset({"admin"}),
    # The GPs' public signing keys, to check a GP's signature (no patient data).
    "directory.view": frozenset({"gp", "nurse"}),
    "outbox.manage": frozenset({"admin"}),
    "token.manage": frozenset({"gp"}),
}


def is_allowed(actor: Actor, action: str, resource: Resource) -> bool:
    """True when actor may do action on resource; never raises for a 'no'."""
    if actor.is_system:
        return True
    roles = POLICY.get(action)
    if roles is None or actor.role not in roles:
        return False
    if resource.kind in {"directory", "outbox"}:
        return actor.role == "admin"
    if actor.org_id is None:
        return False
    if actor.role == "nurse" and resource.kind in {"request", "ask"}:
        # A nurse sees what was addressed to one of her teams, nothing else.
        return bool(actor.team_ids & resource.team_ids)
    if actor.role == "gp" and resource.kind == "ask":
        return resource.org_id == actor.org_id
    if resource.org_id is None:
        # Lists and searches: the caller scopes the query to actor.org_id itself.
        return True
    return resource.org_id == actor.org_id


def require(actor: Actor, action: str, resource: Resource, *, hide: bool = False) -> None:
    """Raise unless allowed; with hide=True a refusal looks like 'not found' (404)."""
    if is_allowed(actor, action, resource):
        return
    if hide:
        raise NotFoundError(f"{resource.kind} not found", action=action)
    raise AccessDeniedError(
        f"{actor.role} {actor.username} may not {action}", action=action, role=actor.role
    )
