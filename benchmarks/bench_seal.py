"""Sealing throughput: the gateway's Keyring.seal() next to the raw gpg command, same run.

Both do the same work on the same bytes: sign with the GP's passphrase-protected key
(loopback pinentry, no passphrase cache) and encrypt to the team's three pinned
encryption subkeys, ASCII armored, one gpg process per message:

    gpg --batch --pinentry-mode loopback --passphrase-fd 0 --trust-model always \\
        --no-encrypt-to --armor --sign --encrypt --local-user GP -r SUB1! -r SUB2! -r SUB3!

on the rendered inner MIME entity of the example request (what seal() signs and
encrypts). The gateway figure is the whole seal(): key checks, building the inner
entity, gpg, the recipient cross-check and the outer PGP/MIME envelope.

Raw and gateway segments alternate (raw, gateway, raw, gateway, ...) so that the other
load on the machine falls on both alike; the ratio is gateway / raw per worker count.
Each S2K setting gets its own GP key (the S2K count is fixed when a key is protected).

Scaling with cores (issue 24): the gateway runs with ``[gpg] signers = 2`` (two signing
homes, one gpg-agent each). Raw gpg runs with N workers on N agents (worker i in signing
home i, the same keys) and, for comparison, 2 workers on the one agent of the primary home
(what the gateway did before: one agent derives one S2K at a time). Reported: gateway
2 workers / 1 worker, raw 2 agents / 1 agent, raw 2 workers on 1 agent / 1 worker.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import _gateway
from securemail.form import render
from securemail.form import request as forms
from securemail.message import mime
from securemail.message.mime import Envelope, SealInput
from securemail.openpgp import signers
from securemail.openpgp.keyinfo import encryption_subkey

TITLE = "Sealing: gateway seal() vs raw gpg sign+encrypt (3 recipient keys)"
SIGNERS = 2  # signing homes (gpg-agents) the gateway gets; raw gpg uses as many


@dataclass(frozen=True)
class RawGpg:
    """The raw gpg baseline for one gateway: the same bytes, key, passphrase and recipients
    as the gateway's seal(), one gpg process per message in a given signing home."""

    document: SealInput
    inner: bytes
    homes: list[Path]
    tail: list[str]
    stdin: bytes
    recipients: int

    def sign_encrypt(self, home: Path) -> None:
        """One raw gpg sign+encrypt in ``home``; raises when gpg fails."""
        out = subprocess.run(
            ["gpg", "--homedir", str(home), *self.tail],
            input=self.stdin,
            capture_output=True,
            check=False,
        )
        if out.returncode != 0 or not out.stdout.startswith(b"-----BEGIN PGP MESSAGE"):
            raise RuntimeError(f"raw gpg failed: {out.stderr[-300:]!r}")


async def raw_gpg(gw: _gateway.Gateway, signer_homes: int = SIGNERS) -> RawGpg:
    """The baseline command for ``gw``'s example request (its rendered inner entity)."""
    svc = gw.svc
    keyring = svc.keyring
    req = forms.parse_request(
        svc.definition, _gateway.request_data(gw), now=svc.now(), reference="UVZ-2026-000001"
    )
    doc = render.render_request(svc.definition, req)
    document = SealInput(
        reference=req.reference,
        text=doc.text,
        html=doc.html,
        json=doc.json,
        signer_public_key=await keyring.export_public(gw.gp_fingerprint),
    )
    inner = mime.build_inner(document)
    now = datetime.now(UTC)
    subkeys = [
        encryption_subkey(await keyring.key_info(f), now).fingerprint
        for f in gw.member_fingerprints
    ]
    homes = [signers.ensure_signer_home(keyring.homedir, i) for i in range(signer_homes)]
    raw_tail = [
        "--batch",
        "--no-tty",
        "--pinentry-mode",
        "loopback",
        "--passphrase-fd",
        "0",
        "--trust-model",
        "always",
        "--no-encrypt-to",
        "--armor",
        "--sign",
        "--encrypt",
        "--local-user",
        gw.gp_fingerprint,
    ]
    for s in subkeys:
        raw_tail += ["-r", s + "!"]
    raw_input = _gateway.GP_PASSPHRASE.encode() + b"\n" + inner
    return RawGpg(document, inner, homes, raw_tail, raw_input, len(subkeys))


async def _measure(gw: _gateway.Gateway, *, segment: float, rounds: int) -> dict[str, Any]:
    keyring = gw.svc.keyring
    raw_gpg_cmd = await raw_gpg(gw)
    document, inner, homes = raw_gpg_cmd.document, raw_gpg_cmd.inner, raw_gpg_cmd.homes
    subkeys = range(raw_gpg_cmd.recipients)
    envelope = Envelope(
        sender="gateway@gateway.example",
        recipient=_gateway.TEAM,
        subject="Uitvoeringsverzoek UVZ-2026-000001",
        author="huisarts@praktijk.example",  # the GP's address: a user id on the GP's key
    )

    def raw_loop(deadline: float, home: Path) -> int:
        n = 0
        while time.monotonic() < deadline:
            raw_gpg_cmd.sign_encrypt(home)
            n += 1
        return n

    async def gateway_loop(deadline: float) -> int:
        n = 0
        while time.monotonic() < deadline:
            await keyring.seal(
                document,
                signer=gw.gp_fingerprint,
                passphrase=_gateway.GP_PASSPHRASE,
                recipients=gw.member_fingerprints,
                envelope=envelope,
            )
            n += 1
        return n

    async def raw(workers: int, one_agent: bool = False) -> tuple[int, float]:
        start = time.monotonic()
        counts = await asyncio.gather(
            *(
                asyncio.to_thread(raw_loop, start + segment, homes[0 if one_agent else i])
                for i in range(workers)
            )
        )
        return sum(counts), time.monotonic() - start

    async def sealed(workers: int) -> tuple[int, float]:
        start = time.monotonic()
        counts = await asyncio.gather(*(gateway_loop(start + segment) for _ in range(workers)))
        return sum(counts), time.monotonic() - start

    await sealed(1)  # warm up: agent started, listings cached, templates compiled
    out: dict[str, Any] = {
        "inner_bytes": len(inner),
        "recipients": len(subkeys),
        "signers": keyring.signer_count,
    }
    one_agent = [0, 0.0]
    for workers in (1, 2):
        totals = {"raw": [0, 0.0], "gateway": [0, 0.0]}
        for _ in range(rounds):
            for name, fn in (("raw", raw), ("gateway", sealed)):
                n, t = await fn(workers)
                totals[name][0] += n
                totals[name][1] += t
            if workers == 2:  # the old wall: two workers on one agent
                n, t = await raw(2, one_agent=True)
                one_agent[0] += n
                one_agent[1] += t
        raw_rate = totals["raw"][0] / totals["raw"][1]
        gw_rate = totals["gateway"][0] / totals["gateway"][1]
        out[f"workers_{workers}"] = {
            "raw_msgs_per_s": round(raw_rate, 2),
            "gateway_msgs_per_s": round(gw_rate, 2),
            "ratio": round(gw_rate / raw_rate, 3) if raw_rate else None,
            "raw_messages": totals["raw"][0],
            "gateway_messages": totals["gateway"][0],
        }
    w1, w2 = out["workers_1"], out["workers_2"]
    raw_one_agent = one_agent[0] / one_agent[1]
    out["scaling"] = {
        "gateway_2_workers_over_1": _ratio(w2["gateway_msgs_per_s"], w1["gateway_msgs_per_s"]),
        "raw_2_agents_over_1": _ratio(w2["raw_msgs_per_s"], w1["raw_msgs_per_s"]),
        "raw_2_workers_1_agent_msgs_per_s": round(raw_one_agent, 2),
        "raw_2_workers_1_agent_over_1": _ratio(raw_one_agent, w1["raw_msgs_per_s"]),
    }
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _one(team: str, gpg: dict[str, Any] | None, segment: float, rounds: int) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        gw = await _gateway.build(team, gpg={**(gpg or {}), "signers": SIGNERS})
        try:
            return await _measure(gw, segment=segment, rounds=rounds)
        finally:
            await gw.svc.keyring.close()
            gw.close()

    return asyncio.run(go())


def settings_under_test(quick: bool) -> list[tuple[str, dict[str, Any] | None]]:
    """(label, [gpg] overrides) per S2K setting measured."""
    low = ("s2k_20ms", {"s2k_calibration_ms": 20})
    if quick:
        return [low]
    return [("s2k_default", None), low]


def run(quick: bool) -> dict[str, Any]:
    segment, rounds = (2.0, 1) if quick else (8.0, 2)
    team = _gateway.team_keys()
    results: dict[str, Any] = {"segment_seconds": segment, "rounds": rounds}
    table = []
    for label, gpg in settings_under_test(quick):
        r = _one(team, gpg, segment, rounds)
        results[label] = r
        for w in (1, 2):
            x = r[f"workers_{w}"]
            table.append(
                {
                    "metric": f"seal msgs/s, {w} worker{'s' if w > 1 else ''} ({label})",
                    "value": f"{x['gateway_msgs_per_s']} (raw gpg {x['raw_msgs_per_s']})",
                    "ratio": x["ratio"],
                    "target": "ratio >= 0.95",
                    "met": x["ratio"] is not None and x["ratio"] >= 0.95,
                }
            )
        sc = r["scaling"]
        table.append(
            {
                "metric": f"seal 2 workers / 1 worker, 2 signing agents ({label})",
                "value": f"raw gpg 2 agents / 1: {sc['raw_2_agents_over_1']};"
                f" raw gpg 2 workers on 1 agent / 1: {sc['raw_2_workers_1_agent_over_1']}",
                "ratio": sc["gateway_2_workers_over_1"],
                "target": "ratio >= 1.7",
                "met": (sc["gateway_2_workers_over_1"] or 0) >= 1.7,
            }
        )
    results["table"] = table
    results["title"] = TITLE
    return results
