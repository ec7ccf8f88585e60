"""python -m benchmarks [--quick]: run every benchmark module that exposes run(quick)."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

#: Modules with run(quick: bool) -> dict, in the order they run.
MODULES = ("bench_audit",)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--quick", action="store_true", help="small sizes, for CI and laptops")
    args = ap.parse_args(argv)
    for name in MODULES:
        import_module(f"benchmarks.{name}").run(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
