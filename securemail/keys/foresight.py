"""Foresight: which pinned keys (and GP signing keys) stop being usable soon, and which active
team is about to lose its last usable key. One function for the CLI, the admin page and the
operator's notice.

Invariants: a key's end is when its checks would first fail (keyinfo.expires_for_encryption
for team keys, the signing key's expiry for GPs), judged against an explicit ``now``;
a team is *at risk* when no active pinned member key of it is still usable ``RISK_DAYS``
from now, which includes a team with no usable key today. The notice carries no key
details (notify's fixed text), only a link to /admin/keys; it is queued at most once a day.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlite_utils

from securemail.access import SYSTEM
from securemail.accounts import auth
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.errors import NotFoundError
from securemail.message import notify
from securemail.openpgp.keyinfo import (
    KeyInfo,
    expires_for_encryption,
    unusable_reason,
    unusable_signer_reason,
)
from securemail.region import directory
from securemail.services import Services

BUCKETS = (1, 7, 30)  # days: "expires within 1 day", "within 7", "within 30"
RISK_DAYS = 7


@dataclass(frozen=True, slots=True)
class KeyState:
    """One key as of the check: whose, whether usable now (why not) and until when."""

    kind: str  # "team" (a member's encryption key) or "gp" (a GP's signing key)
    owner: str  # team address, or the GP's username
    holder: str  # member name, or the GP's name
    email: str
    fingerprint: str
    status: str  # team member status (active | quarantined), "active" for a GP's key
    why: str | None  # None when usable now
    usable_until: datetime | None  # None: no end (when usable)
    bucket: int | None  # 1, 7 or 30 when it ends within that many days

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["usable_until"] = self.usable_until.isoformat() if self.usable_until else None
        return out


@dataclass(frozen=True, slots=True)
class Foresight:
    checked_at: datetime
    keys: tuple[KeyState, ...]
    at_risk: tuple[str, ...]  # active team addresses without a usable key in RISK_DAYS days

    @property
    def ok(self) -> bool:
        return not self.at_risk

    def expiring(self, days: int) -> list[KeyState]:
        """Keys usable now that end within ``days`` (and not within a smaller bucket)."""
        return [k for k in self.keys if k.bucket == days]

    @property
    def unusable(self) -> list[KeyState]:
        return [k for k in self.keys if k.why is not None]

    @property
    def needs_notice(self) -> bool:
        return bool(self.at_risk) or any(
            k.bucket is not None and k.bucket <= RISK_DAYS for k in self.keys
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "ok": self.ok,
            "at_risk_teams": list(self.at_risk),
            "expiring": {str(d): [k.fingerprint for k in self.expiring(d)] for d in BUCKETS},
            "keys": [k.as_json() for k in self.keys],
        }


def _bucket(until: datetime | None, now: datetime) -> int | None:
    if until is None:
        return None
    return next((d for d in BUCKETS if until - now <= timedelta(days=d)), None)


async def _info(svc: Services, fpr: str) -> KeyInfo | None:
    try:
        return await svc.keyring.key_info(fpr)
    except NotFoundError:
        return None


async def foresee(svc: Services, *, now: datetime | None = None) -> Foresight:
    """The state of every pinned member key of every active team, and of every GP's
    signing key, as of ``now`` (default: the services' clock)."""
    now = now or svc.now()

    def load(db: sqlite_utils.Database) -> tuple[list[Any], list[auth.User]]:
        teams = [(t, directory.members(db, t.id, status=None)) for t in directory.list_teams(db)]
        gps = [
            auth.user_by_id(db, r[0])
            for r in db.execute(
                "SELECT id FROM users WHERE role = 'gp' AND active = 1 "
                "AND signing_fingerprint != '' ORDER BY username"
            )
        ]
        return teams, gps

    teams, gps = await svc.store.read(load)
    states: list[KeyState] = []
    at_risk: list[str] = []
    horizon = now + timedelta(days=RISK_DAYS)
    for team, members in teams:
        lasting = False
        for m in members:
            if m.status == "removed":
                continue
            info = await _info(svc, m.fingerprint)
            why = {"quarantined": "quarantined"}.get(m.status) or unusable_reason(
                info, m.email, now
            )
            until = expires_for_encryption(info, now) if info and why is None else None
            lasting |= why is None and (until is None or until > horizon)
            bucket = _bucket(until, now) if why is None else None
            states.append(
                KeyState(
                    "team",
                    team.address,
                    m.name,
                    m.email,
                    m.fingerprint,
                    m.status,
                    why,
                    until,
                    bucket,
                )
            )
        if not lasting:
            at_risk.append(team.address)
    for gp in gps:
        info = await _info(svc, gp.signing_fingerprint)
        why = unusable_signer_reason(info, now)
        until = info.expires if info and why is None else None
        states.append(
            KeyState(
                "gp",
                gp.username,
                gp.name,
                gp.email,
                gp.signing_fingerprint,
                "active",
                why,
                until,
                _bucket(until, now) if why is None else None,
            )
        )
    return Foresight(now, tuple(states), tuple(at_risk))


def notice_reference(now: datetime) -> str:
    """One notice a day at most: the reference is the day (KEYS-20260112)."""
    return f"KEYS-{now:%Y%m%d}"


async def notify_admin(svc: Services, foresight: Foresight) -> str | None:
    """Queue the operator's key notice when something needs doing and none went out today;
    return its reference, or None (nothing to say, no admin_address, already sent)."""
    to = svc.settings.gateway.admin_address
    if not to or not foresight.needs_notice:
        return None
    reference = notice_reference(foresight.checked_at)
    notice = notify.notice_key_expiring(reference, to, svc.settings)

    def queue(db: sqlite_utils.Database) -> str | None:
        if outbox.has_reference(db, reference):
            return None
        outbox.enqueue(db, notice, actor=SYSTEM, now=svc.now().timestamp())
        detail = f"at_risk={len(foresight.at_risk)}; expiring_7d=" + str(
            sum(1 for k in foresight.keys if k.bucket in (1, 7))
        )
        audit.record(
            db,
            audit.AuditEvent.of(
                SYSTEM,
                "notice.send",
                object_type="notice",
                object_id=reference,
                outcome_detail=detail,
            ),
        )
        return reference

    return await svc.store.write(queue)
