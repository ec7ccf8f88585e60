"""Run the benchmarks: ``python -m benchmarks [--quick] [NAME ...]``.

Discovers every ``benchmarks/bench_*.py`` that exposes ``run(quick: bool) -> dict``, runs
them one after the other (or only the NAMEs given, e.g. ``seal e2e``), writes
``benchmarks/results.json`` (figures plus machine info: cores, load, gpg, Python, date)
and prints a readable table. A benchmark may put a ``table`` list in its dict: rows with
``metric``, ``value`` and optionally ``ratio``, ``target`` and ``met``; other figures are
kept in the JSON only. A benchmark that raises is reported and the others still run.

Times are benchmark output, never test assertions. The machine is shared: compare the
ratios measured in one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names of the benchmark modules (bench_<name>.py), sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def machine() -> dict[str, Any]:
    try:
        gpg = subprocess.run(
            ["gpg", "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.splitlines()
    except OSError:
        gpg = []
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "gpg": gpg[0] if gpg else "",
        "libgcrypt": next((x for x in gpg if x.startswith("libgcrypt")), ""),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _table(name: str, result: dict[str, Any]) -> list[str]:
    lines = [f"== {result.get('title', name)}  [{result.get('seconds', '?')} s]"]
    if "error" in result:
        return [*lines, f"   FAILED: {result['error']}"]
    if "table" not in result:  # a benchmark without a table: its top-level figures
        for key, value in result.items():
            if isinstance(value, int | float | str) and key not in ("title", "seconds"):
                lines.append(f"   {key:<58} {value}")
    for row in result.get("table", []):
        met = row.get("met")
        mark = "" if met is None else ("  ok" if met else "  NOT MET")
        ratio = f"  ratio {row['ratio']}" if row.get("ratio") is not None else ""
        target = f"  (target {row['target']})" if row.get("target") else ""
        lines.append(f"   {row['metric']:<58} {row['value']}{ratio}{target}{mark}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The figures of a results.json as a Markdown table (for the README)."""
    m = report["machine"]
    lines = [
        f"`{report['command']}` on {m['date'][:10]}: {m['cores']} cores (shared; load average"
        f" {m['load_average'][0]} before, {m.get('load_average_after', ['?'])[0]} after),"
        f" {m['gpg']}, {m['libgcrypt']}, Python {m['python']}.",
        "",
        "| benchmark | figure | value | target |",
        "|---|---|---|---|",
    ]
    for name, result in report["benchmarks"].items():
        for row in result.get("table", []):
            ratio = f" (ratio {row['ratio']})" if row.get("ratio") is not None else ""
            met = {True: " met", False: " **not met**"}.get(row.get("met"))  # type: ignore[call-overload]
            target = f"{row['target']}{met or ''}" if row.get("target") else ""
            lines.append(f"| {name} | {row['metric']} | {row['value']}{ratio} | {target} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small scale, under a minute")
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {discover()})")
    parser.add_argument(
        "--markdown", action="store_true", help="print the last results as a Markdown table"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.output.read_text(encoding="utf-8"))))
        return 0
    names = args.names or discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)}")
    report: dict[str, Any] = {
        "command": " ".join(
            ["python -m benchmarks", *(["--quick"] if args.quick else []), *args.names]
        ),
        "quick": args.quick,
        "machine": machine(),
        "benchmarks": {},
    }
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            result = dict(module.run(args.quick))
        except Exception as exc:  # boundary: one failed benchmark does not stop the others
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.monotonic() - start, 1)
        report["benchmarks"][name] = result
        print("\n".join(_table(name, result)), flush=True)
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    m = report["machine"]
    print(
        f"\n{m['cores']} cores, load {m['load_average']} -> {m['load_average_after']}, "
        f"{m['gpg']}, {m['libgcrypt']}, Python {m['python']}; wrote {args.output}"
    )
    return 1 if any("error" in r for r in report["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
