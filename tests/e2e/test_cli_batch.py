"""`securemail request send --batch`: the real CLI in a subprocess, real gpg, a real relay.

Holds the batch's promises (securemail.cli.batch): one result line per request line naming
its line (and field), each line its own transaction (a bad line stores nothing and undoes
nothing), bounded input (lines and line length from [gateway]), one passphrase per batch and
a refused passphrase tried once, never per line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from securemail import config
from securemail.home import open_services
from tests.e2e.test_send_path import assert_opens_as_nurse
from tests.gateway import (
    EXAMPLE,
    GP_PASSPHRASE,
    Gateway,
    deliver_all,
    env_for_cli,
    example,
    request_send_cli,
)


def run_batch(
    gw: Gateway,
    tmp_path: Path,
    lines: list[str],
    *,
    passphrase: str = GP_PASSPHRASE,
    env: dict[str, str] | None = None,
    via_stdin: bool = False,
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """The batch as a practice system runs it; its result lines parsed."""
    body = "".join(line + "\n" for line in lines)
    batch_file = tmp_path / "batch.ndjson"
    batch_file.write_text(body, encoding="utf-8")
    proc = request_send_cli(
        gw,
        tmp_path,
        "--batch",
        "-" if via_stdin else str(batch_file),
        passphrase=passphrase,
        stdin=body if via_stdin else None,
        env=env,
        timeout=300,
    )
    assert "Traceback" not in proc.stderr
    results = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    return proc, results


def stored(gw: Gateway) -> tuple[int, int]:
    """Requests and outbox rows in the gateway's database."""
    return gw.svc.store.read_sync(lambda db: (db["requests"].count, db["outbox"].count))


def reopen(gw: Gateway) -> None:
    gw.svc = open_services(config.load(gw.home))


def line(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False)


def bad_bsn() -> dict[str, Any]:
    data = example()
    data["patient"]["bsn"] = "123456789"
    return data


async def test_batch_sends_every_good_line_and_names_each_bad_one(
    gw: Gateway, smtp_server: Any, tmp_path: Path
) -> None:
    # Given a batch on stdin: good requests, a bare and an enveloped one, an invalid BSN,
    # broken JSON, an empty line and a line that carries a passphrase
    before = stored(gw)
    gw.svc.close()
    lines = [
        line(example()),
        line({"request": example(), "idempotency_key": "practice-0001"}),
        line(bad_bsn()),
        '{"patient": ',
        "",
        line({"request": example(), "passphrase": GP_PASSPHRASE}),
        line(example()),
    ]
    # When the practice system sends it
    proc, results = run_batch(gw, tmp_path, lines, via_stdin=True)
    # Then every request line has one result, in input order, naming its line
    assert [r["line"] for r in results] == [1, 2, 3, 4, 6, 7]
    sent = [r for r in results if "reference" in r]
    assert [r["line"] for r in sent] == [1, 2, 7]
    assert len({r["reference"] for r in sent}) == 3
    by_line = {r["line"]: r for r in results}
    assert by_line[3]["error"] == "form.invalid"
    assert by_line[3]["field"] == "patient.bsn"
    assert by_line[3]["message"].startswith("line 3, field patient.bsn: ")
    assert by_line[4]["error"] == "input.invalid"
    assert by_line[4]["message"].startswith("line 4: not valid JSON")
    assert by_line[6]["field"] == "passphrase"
    # And no value from a request is echoed (only line numbers, fields and codes)
    assert EXAMPLE["patient"]["bsn"] not in proc.stdout + proc.stderr
    assert "123456789" not in proc.stdout + proc.stderr
    # And it exits 1 (not all sent) with a summary on stderr
    assert proc.returncode == 1
    assert "batch: 3 sent, 3 refused (lines 3, 4, 6)" in proc.stderr
    # And exactly the good lines are stored, each whole: nothing of the bad ones
    reopen(gw)
    refs = gw.svc.store.read_sync(
        lambda db: {r[0] for r in db.execute("SELECT reference FROM requests")}
    )
    assert stored(gw)[0] == before[0] + 3
    assert {r["reference"] for r in sent} <= refs
    await deliver_all(gw.svc)
    mails = [m for m in smtp_server.handler.mailbox().values() if b"multipart/encrypted" in m]
    assert len(mails) == 3
    for raw in mails:
        assert_opens_as_nurse(gw, raw)


async def test_batch_repeat_with_the_same_keys_sends_nothing_twice(
    gw: Gateway, tmp_path: Path
) -> None:
    # Given a batch whose lines carry idempotency keys, sent once
    gw.svc.close()
    lines = [line({"request": example(), "idempotency_key": f"key-{i}"}) for i in (1, 2)]
    _, first = run_batch(gw, tmp_path, lines)
    reopen(gw)
    after_first = stored(gw)
    gw.svc.close()
    # When the practice system sends the same batch again (after a timeout, say)
    proc, again = run_batch(gw, tmp_path, lines)
    # Then each line answers with the first send's reference and nothing new is stored
    assert proc.returncode == 0, proc.stderr
    assert [r["reference"] for r in again] == [r["reference"] for r in first]
    reopen(gw)
    assert stored(gw) == after_first


async def test_wrong_passphrase_is_tried_once_and_nothing_is_stored(
    gw: Gateway, tmp_path: Path
) -> None:
    before = stored(gw)
    gw.svc.close()
    # When a batch of three is sent with a wrong passphrase
    proc, results = run_batch(gw, tmp_path, [line(example())] * 3, passphrase="not the one")
    # Then the first line is refused for the passphrase and the rest are not tried
    assert proc.returncode == 1
    assert [r["error"] for r in results] == [
        "seal.bad_passphrase",
        "batch.not_sent",
        "batch.not_sent",
    ]
    assert "refused at line 1" in results[2]["message"]
    reopen(gw)
    assert stored(gw) == before


async def test_more_lines_than_the_setting_allows_are_not_read(gw: Gateway, tmp_path: Path) -> None:
    # Given [gateway] batch_max_lines = 2 and a batch of four (the last two invalid JSON:
    # they would each get an error if they were read)
    before = stored(gw)
    gw.svc.close()
    lines = [line(bad_bsn()), line(bad_bsn()), "{", "{"]
    proc, results = run_batch(gw, tmp_path, lines, env={"SECUREMAIL_GATEWAY_BATCH_MAX_LINES": "2"})
    # Then lines 1 and 2 are answered, line 3 names the bound, line 4 is never read
    assert [r["line"] for r in results] == [1, 2, 3]
    assert results[2]["error"] == "batch.too_many_lines"
    assert "more than 2 lines" in results[2]["message"]
    assert proc.returncode == 1
    reopen(gw)
    assert stored(gw) == before


async def test_a_line_longer_than_the_setting_ends_the_batch_there(
    gw: Gateway, tmp_path: Path
) -> None:
    # Given [gateway] batch_max_line_kb = 8 and a 20 KiB line between two invalid ones
    gw.svc.close()
    padded = example()
    padded["remarks"] = "x" * 20_000
    lines = [line(bad_bsn()), line(padded), line(bad_bsn())]
    proc, results = run_batch(
        gw, tmp_path, lines, env={"SECUREMAIL_GATEWAY_BATCH_MAX_LINE_KB": "8"}
    )
    # Then the long line is refused, naming the setting, and nothing after it is read
    assert [r["line"] for r in results] == [1, 2]
    assert results[1]["error"] == "batch.line_too_long"
    assert "batch_max_line_kb" in results[1]["message"]
    assert proc.returncode == 1
    reopen(gw)


def test_batch_and_file_exclude_each_other(
    tmp_path: Path,
) -> None:
    base = [sys.executable, "-m", "securemail", "request", "send", "--home", str(tmp_path)]
    both = subprocess.run(
        [*base, "--as", "x", "--file", "a.json", "--batch", "b.ndjson"],
        capture_output=True,
        text=True,
        env=env_for_cli(),
        check=False,
    )
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
