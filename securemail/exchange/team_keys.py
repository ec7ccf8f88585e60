"""Which of a team's pinned member keys a message may be sealed to: the one rule for team
keys, used by the send, passing on, the pass-on list and the practice's thread messages.

Invariant: a key is used only when it passes every check of ``keys.pinning.check_member_key``
(pinned, active, not expired or revoked, out of quarantine); a team without one is a
``RecipientKeyError`` (``no_usable_key``) that names each member left out and why, so the
message stops before anything is sealed.
"""

from __future__ import annotations

from securemail.keys import pinning as keydir
from securemail.openpgp.keyinfo import parse_fingerprint
from securemail.openpgp.keyring import Fingerprint, RecipientKeyError
from securemail.region import directory
from securemail.region.directory import Team
from securemail.services import Services


async def usable_recipients(
    svc: Services, team: Team
) -> tuple[list[Fingerprint], list[dict[str, str]]]:
    """The team's pinned member keys that pass every check (keydir.check_member_key), and the
    members left out with why: a bad key or one still quarantined. Removed keys are gone."""
    members = await svc.store.read(lambda db: directory.members(db, team.id, status=None))
    await svc.keyring.load_keys(_pinned(members))  # one gpg listing for the team
    return await _usable_of(svc, team, members)


async def teams_can_receive(svc: Services, teams: list[Team]) -> dict[int, bool]:
    """Whether each team has a usable key (usable_recipients), for a list of many teams (the
    pass-on list names every team of the region): one store read and one gpg listing for all
    of them, not one of each per team."""
    ids = [t.id for t in teams]
    members = await svc.store.read(lambda db: directory.members_by_team(db, ids))
    await svc.keyring.load_keys([f for ms in members.values() for f in _pinned(ms)])
    out: dict[int, bool] = {}
    for team in teams:
        try:
            await _usable_of(svc, team, members[team.id])
        except RecipientKeyError:
            out[team.id] = False
            continue
        out[team.id] = True
    return out


def _pinned(members: list[directory.Member]) -> list[Fingerprint]:
    pinned = []
    for m in members:
        if m.status != "active":
            continue
        try:
            pinned.append(parse_fingerprint(m.fingerprint))
        except ValueError:
            continue  # check_member_key reports it
    return pinned


async def _usable_of(
    svc: Services, team: Team, members: list[directory.Member]
) -> tuple[list[Fingerprint], list[dict[str, str]]]:
    """usable_recipients for members already read (their keys listed: the checks are cached)."""
    good: list[Fingerprint] = []
    skipped: list[dict[str, str]] = []
    now = svc.now()
    for m in members:
        if m.status == "removed":
            continue
        try:
            await keydir.check_member_key(svc.keyring, m, now)
        except RecipientKeyError as exc:
            skipped.append(
                {
                    "name": m.name,
                    "fingerprint": m.fingerprint,
                    "why": str(exc.context.get("why", exc.code)),
                }
            )
            continue
        good.append(m.fingerprint)
    if not good:
        raise RecipientKeyError(
            f"team {team.address} has no usable key"
            + (
                f" ({'; '.join(s['fingerprint'][-16:] + ': ' + s['why'] for s in skipped)})"
                if skipped
                else " (no member keys pinned)"
            ),
            address=team.address,
            why="no_usable_key",
        )
    return good, skipped


__all__ = ["teams_can_receive", "usable_recipients"]
