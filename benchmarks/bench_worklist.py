"""Work lists, searches and the request page at scale: p50/p95/p99 over real HTTP with
1,000 and with 1,000,000 requests (10,000 users) in the database, and the ratio 1M/1k.

The home: a real gateway (benchmarks._gateway: GP with a signing key, a team with member
keys, consent) and ONE real request through the send pipeline (sign, seal, queue). Its row,
its hop, its outbox message and its signed document are the templates of the bulk: the other
requests are inserted with the same schema, each document the template with its own
reference, patient name and BSN, sealed with the home's real content key under its own
reference (contentbox: a sealed value opens only in its own row, so blobs cannot be reused).
A name search and the request page therefore really unseal. Not filled in bulk (said in
docs/performance.md): the audit trail's history, order dates, stored answers, the signed
order (40 kB a request, read by a pass-on only); the bulk outbox messages carry no MIME
bytes (the pages never read them).

Shape: 500 practices and 300 teams; 10,000 users (GPs and nurses). The benchmark GP's
practice holds ~0.3 % of the requests (3,000 at 1M), the benchmark nurse's team ~0.4 %, one
practice ~2 % (the worst case, 20,000 at 1M); the rest spread evenly. The 1,000 home is a
pilot region: the GP's practice 300, the team 400 (the same pages, a small database). The
newest 1 % of the requests are open, with deadlines; the rest answered.

The 1M home takes minutes to build: it is cached under benchmarks/.cache/ (gitignored), keyed
by BUILD_VERSION, the size and the columns of the tables it fills, and used in place (a run
adds its sessions and audit rows). Index migrations added later apply to it when the server
opens it, as they would in production. It is built only with SECUREMAIL_BENCH_SCALE=1 (``make
bench-scale``); once built, ``make bench`` measures it too.

Measured: ``securemail serve`` in its own process on 127.0.0.1; one client per case,
logged in over HTTP (password and TOTP), CSRF token in the POST body of a search; WARMUP
requests first, then SAMPLES. Benchmark output only, never a test assertion.
Run: ``python -m benchmarks worklist`` (1k; 1M too with SECUREMAIL_BENCH_SCALE=1, ``make
bench-scale``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import sqlite_utils

from benchmarks import _gateway
from benchmarks.bench_e2e import _free_port, _start_server, _stop_server
from securemail import config, contentbox
from securemail.access import SYSTEM
from securemail.accounts import auth, totp
from securemail.exchange import name_index
from securemail.exchange import send as exchange
from securemail.region import directory

TITLE = "Work lists and the request page over HTTP: 1,000 vs 1,000,000 requests, 10,000 users"
BUILD_VERSION = "2"
CACHE = Path(__file__).resolve().parent / ".cache"
AMS = ZoneInfo("Europe/Amsterdam")
PRACTICES = 500
TEAMS = 300
USERS = 10_000
NURSE = "wijkverpleegkundige"
BIG_GP = "bench1"  # the bulk's second user: a GP of the biggest practice (see _users)
NURSE_PASSWORD = "correct horse battery staple nurse"
#: Share of all requests: the benchmark GP's practice, the nurse's team, the biggest practice
#: (at 1M; a small home, a pilot region, gives them SMALL_SHARES: 300, 400 and 100 of 1,000).
SHARES = (0.003, 0.004, 0.02)
SMALL_SHARES = (0.3, 0.4, 0.1)
OPEN_SHARE = 0.01
SAMPLES, WARMUP = 300, 30
KEEP_DAYS = 3650
TARGETS = {"list": 50.0, "search": 50.0, "page": 30.0}
FIRST = ["Anna", "Jan", "Maria", "Pieter", "Fatima", "Mohamed", "Sanne", "Kees", "Els", "Noah"]
FIRST += ["Emma", "Daan", "Julia", "Lucas", "Sophie", "Sem", "Tess", "Finn", "Lotte", "Ahmet"]
LAST = ["de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen"]
LAST += ["Visser", "Smit", "Meijer", "de Boer", "Mulder", "de Groot", "Bos", "Vos", "Peters"]
LAST += ["Hendriks", "van Leeuwen", "Dekker", "Brouwer", "de Wit", "Dijkstra", "Smits", "Yilmaz"]
_FIELD = r'name="{name}" value="([^"]+)"'


# -- the home ---------------------------------------------------------------------------------


def cache_key(n: int) -> str:
    """BUILD_VERSION, the size and the columns of the tables filled: a change rebuilds."""
    home = Path(tempfile.mkdtemp(prefix="smk-"))
    try:
        asyncio.run(_init_only(home))
        conn = sqlite3.connect(str(home / "securemail.db"))
        tables = ("requests", "request_hops", "outbox", "users", "user_teams", "teams")
        cols = {t: [r[1:3] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
        conn.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    text = json.dumps([BUILD_VERSION, n, USERS, PRACTICES, TEAMS, cols], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


async def _init_only(home: Path) -> None:
    from securemail.home import init_home

    await init_home(home)


async def _seed(gw: _gateway.Gateway) -> dict[str, Any]:
    """The nurse, both paired with a TOTP secret, and one real request (the templates)."""
    svc = gw.svc
    now = svc.now_iso()
    nurse = svc.store.write_sync(
        lambda db: auth.add_user(
            db,
            SYSTEM,
            username=NURSE,
            name="W. Verpleegkundige",
            role="nurse",
            org_code="87654321",
            password=NURSE_PASSWORD,
            teams=[_gateway.TEAM],
            now=now,
        )
    )
    secrets: dict[str, str] = {}
    for username, user_id in (("huisarts", _user_id(gw, "huisarts")), (NURSE, nurse.id)):

        def pair(db: Any, u: str = username, i: int = user_id) -> str:
            return totp.enrol_for_demo(db, i, u, now=svc.now())

        secrets[username] = svc.store.write_sync(pair)
    result = await exchange.send(svc, gw.gp, _gateway.example(), _gateway.GP_PASSPHRASE)
    return {"secrets": secrets, "template_reference": result.reference}


def _user_id(gw: _gateway.Gateway, username: str) -> int:
    return int(gw.svc.store.read_sync(lambda db: auth.user_by_name(db, username).id))


def _directory(gw: _gateway.Gateway) -> None:
    """PRACTICES practices and TEAMS teams (the benchmark's own practice and team included)."""
    now = gw.svc.now_iso()

    def add(db: Any) -> None:
        for i in range(1, PRACTICES):
            directory.add_org(
                db, SYSTEM, code=f"{20000000 + i}", kind="practice", name=f"Praktijk {i}", now=now
            )
        for i in range(1, 31):
            directory.add_org(
                db, SYSTEM, code=f"{30000000 + i}", kind="nursing", name=f"Zorg {i}", now=now
            )
        for i in range(1, TEAMS):
            directory.add_team(
                db,
                SYSTEM,
                org_code=f"{30000000 + 1 + i % 30}",
                name=f"Wijkteam {i}",
                address=f"wijkteam-{i}@zorg-{1 + i % 30}.example",
                now=now,
            )

    gw.svc.store.write_sync(add)


def _rows(conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur]


def _insert(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"  # noqa: S608
    conn.executemany(sql, [[r[c] for c in cols] for r in rows])


def _users(conn: sqlite3.Connection, practices: list[int], teams: list[int]) -> int:
    """USERS accounts in all: 40 % GPs over the practices, the rest nurses over the teams
    (the template GP's row and password hash copied: nobody logs in as them)."""
    gp = _rows(conn, "SELECT * FROM users WHERE username = 'huisarts'", [])[0]
    have = int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])
    rows, memberships = [], []
    next_id = int(conn.execute("SELECT MAX(id) FROM users").fetchone()[0]) + 1
    for i in range(USERS - have):
        row = dict(gp, id=next_id + i, username=f"bench{i}", name=f"Gebruiker {i}", email="")
        row["signing_fingerprint"] = ""
        if i % 5 < 2:
            row.update(role="gp", org_id=practices[i % len(practices)])
        else:
            row.update(role="nurse", org_id=None, big="", function="")
            memberships.append({"user_id": row["id"], "team_id": teams[i % len(teams)]})
        rows.append(row)
    _insert(conn, "users", rows)
    _insert(conn, "user_teams", memberships)
    return have + len(rows)


def _pick(rng: random.Random, special: list[tuple[int, float]], others: list[int]) -> int:
    x = rng.random()
    for value, share in special:
        if x < share:
            return value
        x -= share
    return others[rng.randrange(len(others))]


def _bulk(home: Path, n: int, template_ref: str, *, seed: int = 20) -> dict[str, Any]:
    """n - 1 more requests like the template one, oldest first, over ~5 years up to now."""
    settings = config.load(home)
    box = contentbox.load(settings)
    conn = sqlite3.connect(str(settings.db_path), isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    # One transaction: with the default small page cache the indexes' pages are spilled to
    # the WAL again and again (a WAL several times the database).
    conn.execute("PRAGMA cache_size = -2000000")
    conn.execute("BEGIN")
    row0 = _rows(conn, "SELECT * FROM requests WHERE reference = ?", [template_ref])[0]
    hop0 = _rows(conn, "SELECT * FROM request_hops WHERE reference = ?", [template_ref])[0]
    out0 = _rows(conn, "SELECT * FROM outbox WHERE reference = ?", [template_ref])[0]
    doc0 = json.loads(box.open(row0["document"], context=_ctx(template_ref)))
    ids = {r[0]: r[1] for r in conn.execute("SELECT code, id FROM organisations")}
    practices = [i for c, i in ids.items() if c.startswith("2")]
    big = practices.pop()
    teams = [r[0] for r in conn.execute("SELECT id FROM teams WHERE id != ?", [row0["team_id"]])]
    users = _users(conn, [row0["practice_org_id"], big, *practices], [row0["team_id"], *teams])
    gp_share, team_share, big_share = SHARES if n > 10_000 else SMALL_SHARES
    rng = random.Random(seed)
    now = datetime.now(UTC)
    span = timedelta(days=5 * 365)
    counters: dict[int, int] = {}
    requests, hops, outbox = [], [], []
    tokens: list[name_index.Row] = []  # the keyed name tokens, as send writes them
    next_request = int(conn.execute("SELECT MAX(id) FROM requests").fetchone()[0]) + 1
    next_hop = int(conn.execute("SELECT MAX(id) FROM request_hops").fetchone()[0]) + 1
    next_out = int(conn.execute("SELECT MAX(id) FROM outbox").fetchone()[0]) + 1
    for i in range(n - 1):
        created = now - span * (1 - i / n)
        year = created.astimezone(AMS).year
        counters[year] = counters.get(year, 0) + 1
        ref = f"UVZ-{year}-{counters[year]:06d}"
        if ref == template_ref:
            counters[year] += 1
            ref = f"UVZ-{year}-{counters[year]:06d}"
        practice = _pick(rng, [(row0["practice_org_id"], gp_share), (big, big_share)], practices)
        team = _pick(rng, [(row0["team_id"], team_share)], teams)
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        bsn = f"{rng.randrange(10**8, 10**9):09d}"
        urgent = rng.random() < 0.1
        doc = json.loads(json.dumps(doc0))
        doc["reference"] = ref
        doc["urgency"] = "spoed" if urgent else row0["urgency"]
        doc["patient"] = {**doc["patient"], "name": name, "bsn": bsn}
        text = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        is_open = i >= n * (1 - OPEN_SHARE)
        due = created + (timedelta(hours=2) if urgent else timedelta(days=5))
        stamp = created.isoformat()
        requests.append(
            dict(
                row0,
                id=next_request + i,
                reference=ref,
                urgency="spoed" if urgent else row0["urgency"],
                practice_org_id=practice,
                team_id=team,
                patient_bsn=bsn,
                document=box.seal(text, context=_ctx(ref)),
                message_id=f"<{ref}.{i}@gateway.example>",
                state="open" if is_open else "answered",
                answer="",
                # the GP's sealed signed order (about 40 kB, read only by a pass-on): left
                # out, as after its purge; with it the 1M home would be 45 GB
                signed_order="",
                answer_status="" if is_open else "geaccepteerd",
                answer_due=due.astimezone(AMS).isoformat(timespec="minutes"),
                overdue_at=due.isoformat() if is_open and due < now else "",
                answered_at="" if is_open else (created + timedelta(hours=20)).isoformat(),
                created_at=stamp,
                updated_at=stamp,
            )
        )
        hops.append(dict(hop0, id=next_hop + i, reference=ref, team_id=team, sent_at=stamp))
        tokens += [(t, practice, team, next_request + i) for t in name_index.tokens_with(box, name)]
        t = created.timestamp()
        outbox.append(
            dict(
                out0,
                id=next_out + i,
                reference=ref,
                message_id=f"<{ref}.{i}@gateway.example>",
                mime=b"",
                status="sent",
                created_at=t,
                queued_at=t,
                updated_at=t,
                next_attempt_at=t,
                final_at=t,
                final_handled_at=t,
            )
        )
        if len(requests) >= 10_000:
            _flush(conn, requests, hops, outbox, tokens)
    _flush(conn, requests, hops, outbox, tokens)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    counts = {
        "requests": int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]),
        "users": users,
        "gp_practice_requests": _count(conn, "practice_org_id", row0["practice_org_id"]),
        "biggest_practice_requests": _count(conn, "practice_org_id", big),
        "nurse_team_requests": _count(conn, "team_id", row0["team_id"]),
        "biggest_practice_id": big,
    }
    conn.close()
    return counts


def _count(conn: sqlite3.Connection, column: str, value: int) -> int:
    sql = f"SELECT COUNT(*) FROM requests WHERE {column} = ?"  # noqa: S608 (fixed names)
    return int(conn.execute(sql, [value]).fetchone()[0])


def _ctx(reference: str) -> str:
    return contentbox.context("requests", "document", reference)


def _flush(
    conn: sqlite3.Connection,
    requests: list[dict[str, Any]],
    hops: list[dict[str, Any]],
    outbox: list[dict[str, Any]],
    tokens: list[name_index.Row],
) -> None:
    _insert(conn, "requests", requests)
    _insert(conn, "request_hops", hops)
    _insert(conn, "outbox", outbox)
    # not in the cache key's tables: a home cached before the tokens gets them from
    # migration 0010's backfill when the server opens it
    conn.executemany(
        "INSERT INTO request_name_tokens (token, practice_org_id, team_id, request_id) "
        "VALUES (?, ?, ?, ?)",
        tokens,
    )
    for batch in (requests, hops, outbox, tokens):
        batch.clear()


async def build_home(n: int, dest: Path) -> dict[str, Any]:
    """A home at dest with n requests; returns its info (also written to dest/bench.json)."""
    start = time.monotonic()
    gw = await _gateway.build(_gateway.team_keys())
    try:
        seeded = await _seed(gw)
        _directory(gw)
        gw.svc.close()
        await gw.svc.keyring.close()
        _gateway.kill_agent(gw.home / "gnupg")
        counts = _bulk(gw.home, n, seeded["template_reference"])
        gw.relay.stop()
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(gw.home), str(dest))
    except BaseException:
        gw.relay.stop()
        shutil.rmtree(gw.home, ignore_errors=True)
        raise
    info = {**seeded, **counts, "built_in": str(gw.home)}
    info["build_seconds"] = round(time.monotonic() - start, 1)
    (dest / "bench.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def cached_path(n: int) -> Path:
    return CACHE / f"worklist-{n}-{cache_key(n)}"


def home_for(n: int) -> tuple[Path, dict[str, Any]]:
    """The cached home with n requests (built when missing), used in place: a run adds its
    sessions and audit rows to it, as a day's use would; a new index migration applies to it
    when the server opens it."""
    home = cached_path(n)
    if not (home / "bench.json").exists():
        asyncio.run(build_home(n, home))
    info = json.loads((home / "bench.json").read_text(encoding="utf-8"))
    _keep_everything(home / "securemail.toml")
    if info["built_in"] != str(home):  # the relay's CA file is named by its path
        toml = home / "securemail.toml"
        toml.write_text(toml.read_text("utf-8").replace(info["built_in"], str(home)), "utf-8")
        info["built_in"] = str(home)
        (home / "bench.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return home, info


def _keep_everything(toml: Path) -> None:
    """Retention off in effect (KEEP_DAYS): the server would otherwise purge the content of
    every request answered over 30 days ago, and delete rows older than two years, at its
    start, in the middle of the measurement. The pages are measured with every document
    present: the worst case for a name search."""
    text = toml.read_text("utf-8")
    for key in ("content_days", "metadata_days"):
        text = re.sub(rf"(?m)^{key} = [0-9]+$", f"{key} = {KEEP_DAYS}", text)
    toml.write_text(text, "utf-8")


# -- the measurement --------------------------------------------------------------------------


class Client:
    """One person's browser over real HTTP: cookies, the CSRF token of the session."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=120)
        )
        self.csrf = ""

    async def text(self, method: str, path: str, data: dict[str, str] | None = None) -> str:
        async with self.session.request(
            method, self.base + path, data=data, allow_redirects=False
        ) as r:
            body = await r.text()
            if r.status not in (200, 303):
                raise RuntimeError(f"{method} {path}: HTTP {r.status}: {body[:300]}")
            return body

    async def login(self, username: str, password: str, secret: str) -> None:
        page = await self.text("GET", "/login")
        token = _field(page, "login_token")
        form = {"login_token": token, "username": username, "password": password}
        await self.text("POST", "/login", form)
        page = await self.text("GET", "/login/totp")
        code = totp.code_at(secret, totp.step_of(datetime.now(UTC)))
        await self.text(
            "POST", "/login/totp", {"csrf_token": _field(page, "csrf_token"), "code": code}
        )
        self.csrf = _field(await self.text("GET", "/account"), "csrf_token")

    async def timed(self, method: str, path: str, data: dict[str, str] | None) -> float:
        form = None if data is None else {"csrf_token": self.csrf, **data}
        start = time.perf_counter()
        await self.text(method, path, form)
        return (time.perf_counter() - start) * 1000


def _field(page: str, name: str) -> str:
    m = re.search(_FIELD.format(name=re.escape(name)), page)
    if not m:
        raise RuntimeError(f"no {name} field")
    return m.group(1)


Case = tuple[str, str, str, str, str, dict[str, str] | None]


def cases(info: dict[str, Any]) -> list[Case]:
    """(name, kind, who, method, path, form) of each measured page."""
    gp_ref, nurse_ref, name, bsn = info["gp_ref"], info["nurse_ref"], info["name"], info["bsn"]
    return [
        ("GP list, page 1", "list", "gp", "GET", "/requests", None),
        ("GP list, deep page", "list", "gp", "GET", f"/requests?page={info['deep_page']}", None),
        ("nurse list, page 1", "list", "nurse", "GET", "/requests", None),
        ("biggest practice's GP list, page 1", "list", "big", "GET", "/requests", None),
        ("GP search by reference", "search", "gp", "POST", "/requests", {"q": gp_ref}),
        ("GP search by BSN", "search", "gp", "POST", "/requests", {"q": bsn}),
        ("GP search by name", "search", "gp", "POST", "/requests", {"q": name}),
        ("biggest practice's GP search by name", "search", "big", "POST", "/requests", {"q": name}),
        ("GP request page", "page", "gp", "GET", f"/requests/{gp_ref}", None),
        ("nurse request page", "page", "nurse", "GET", f"/requests/{nurse_ref}", None),
    ]


def _targets(home: Path, info: dict[str, Any]) -> dict[str, Any]:
    """What to ask for: a GP's answered request (its reference, BSN, a surname of the
    newest), a nurse's open one, the GP's deepest page."""
    conn = sqlite3.connect(str(home / "securemail.db"))
    box = contentbox.load(config.load(home))
    gp_org, team = conn.execute(
        "SELECT practice_org_id, team_id FROM requests WHERE reference = ?",
        [info["template_reference"]],
    ).fetchone()
    ref, bsn, sealed = conn.execute(
        "SELECT reference, patient_bsn, document FROM requests WHERE practice_org_id = ? "
        "AND state = 'answered' ORDER BY id DESC LIMIT 1 OFFSET 10",
        [gp_org],
    ).fetchone()
    name = json.loads(box.open(sealed, context=_ctx(ref)))["patient"]["name"].split()[-1]
    nurse_ref = conn.execute(
        "SELECT reference FROM requests WHERE team_id = ? AND state = 'open' "
        "ORDER BY id DESC LIMIT 1",
        [team],
    ).fetchone()[0]
    conn.close()
    return {"gp_ref": ref, "bsn": bsn, "name": name, "nurse_ref": nurse_ref}


async def measure(home: Path, info: dict[str, Any], samples: int) -> dict[str, Any]:
    port = _free_port()
    server = await _start_server(home, port)
    base = f"http://127.0.0.1:{port}"
    clients = {"gp": Client(base), "nurse": Client(base), "big": Client(base)}
    out: dict[str, Any] = {}
    try:
        await clients["gp"].login("huisarts", _gateway.GP_PASSWORD, info["secrets"]["huisarts"])
        await clients["nurse"].login(NURSE, NURSE_PASSWORD, info["secrets"][NURSE])
        await clients["big"].login(BIG_GP, _gateway.GP_PASSWORD, info["secrets"][BIG_GP])
        for name, kind, who, method, path, form in cases(info):
            c = clients[who]
            for _ in range(WARMUP):
                await c.timed(method, path, form)
            times = [await c.timed(method, path, form) for _ in range(samples)]
            out[name] = {"kind": kind, **_summary(times)}
    finally:
        for c in clients.values():
            await c.session.close()
        _stop_server(server)
    return out


def _summary(values: list[float]) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {}
    for q in (0.5, 0.95, 0.99):
        v = _gateway.percentile(values, q)
        out[f"p{round(q * 100)}_ms"] = None if v is None else round(v, 1)
    out["n"] = len(values)
    return out


def _pair_big_gp(home: Path, info: dict[str, Any]) -> None:
    """BIG_GP (a GP of the biggest practice: the bulk's second user) paired with a TOTP
    secret, for the worst-case list and name search."""
    db = sqlite_utils.Database(home / "securemail.db")
    try:
        user_id = int(db.execute("SELECT id FROM users WHERE username = ?", [BIG_GP]).fetchone()[0])
        with db.conn:
            secret = totp.enrol_for_demo(db, user_id, BIG_GP, now=datetime.now(UTC))
    finally:
        db.close()
    info["secrets"][BIG_GP] = secret


def run_scale(n: int, samples: int) -> dict[str, Any]:
    home, info = home_for(n)
    try:
        _pair_big_gp(home, info)
        info.update(_targets(home, info))
        # the last page but one: the OFFSET a deep page costs
        info["deep_page"] = max(1, -(-info["gp_practice_requests"] // 25) - 1)
        info["pages"] = asyncio.run(measure(home, info, samples))
    finally:
        _gateway.kill_agent(home / "gnupg")
    return info


def run(quick: bool) -> dict[str, Any]:
    scales = [1_000]
    big = int(os.environ.get("SECUREMAIL_BENCH_REQUESTS", "1000000"))
    # the big home is built on request only (minutes); once cached every full run uses it
    built = (cached_path(big) / "bench.json").exists()
    if not quick and (os.environ.get("SECUREMAIL_BENCH_SCALE") or built):
        scales.append(big)
    samples = 50 if quick else SAMPLES
    results: dict[str, Any] = {"samples": samples, "warmup": WARMUP, "title": TITLE}
    for n in scales:
        r = run_scale(n, samples)
        r.pop("secrets", None)
        results[str(n)] = r
    results["table"] = _table(results, scales)
    return results


def _table(results: dict[str, Any], scales: list[int]) -> list[dict[str, Any]]:
    small, big = results[str(scales[0])], results[str(scales[-1])]
    rows = []
    for name, b in big["pages"].items():
        s = small["pages"][name]
        target = TARGETS[b["kind"]]
        row: dict[str, Any] = {
            "metric": f"{name} p50/p95/p99 ms ({big['requests']:,} requests)",
            "value": f"{b['p50_ms']} / {b['p95_ms']} / {b['p99_ms']} (n {b['n']});"
            f" at {small['requests']:,}: {s['p50_ms']} / {s['p95_ms']} / {s['p99_ms']}",
        }
        if len(scales) > 1:
            row["ratio"] = round(b["p99_ms"] / s["p99_ms"], 2) if s["p99_ms"] else None
            row["target"] = f"p99 < {target:.0f} ms"
            row["met"] = b["p99_ms"] < target
        rows.append(row)
    return rows
