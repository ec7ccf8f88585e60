"""Codemod: drop the redundant ``source_id=...`` arguments that callers thread down to the
audit trail, now that the store knows the gateway's source_id (``store.source_id_of``,
read by ``audit.trail.record``).

What it changes (in ``securemail/`` and ``tests/`` under the given root):

1. A function with a ``source_id`` parameter is *pass-through* when every use of that
   parameter in its body is ``source_id=source_id`` given to ``record`` (the audit trail's)
   or to another pass-through function. Found as a greatest fixpoint, by the callee's last
   name: a name defined twice counts as pass-through only if every definition is. Its
   ``source_id`` parameter goes, and so does every ``source_id=...`` keyword given to it,
   anywhere (tests included).
2. In ``securemail/`` only, ``source_id=...`` keywords given to ``record`` go too. The
   trail's ``record`` keeps its optional parameter: a bare store (one opened without a
   source_id) still takes the caller's, and the tests that a wrong one is refused stay.
3. A local read only to feed those keywords (``src = svc.settings.gateway.source_id``, and
   then ``svc = request.app[...]`` if that was its only use) goes with them. One unpacked
   from a tuple (``now, src, policy = ...``) is left for a hand: ruff's F841 names it.

Kept: ``Store(..., source_id=...)``, ``open_store``, settings, dataclass fields, and any
function that reads its ``source_id`` for something else. Positional ``source_id``
arguments stop the codemod (it reports them; nothing is written).

Run from the repository root, then format:

    python tools/drop_source_id.py            # dry run: lists what it would change
    python tools/drop_source_id.py --write    # rewrites the files
    ruff format securemail tests && ruff check securemail tests && mypy securemail

Re-runnable: on code without such arguments it changes nothing.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

PARAM = "source_id"
AUDIT_RECORD = "record"
#: Callees that own a source_id for real (the store is told it once, at open).
NEVER = frozenset({"Store", "open_store", "open_services", "replace", "source_id_of"})

FuncDef = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class Source:
    path: Path
    text: str
    tree: ast.Module
    offsets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        total = 0
        for line in self.text.splitlines(keepends=True):
            self.offsets.append(total)
            total += len(line)
        self.offsets.append(total)

    def pos(self, line: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets; convert within the line.
        start = self.offsets[line - 1]
        raw = self.text[start : self.offsets[line]].encode("utf-8")
        return start + len(raw[:col].decode("utf-8"))


def callee_name(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


def has_param(fn: FuncDef) -> bool:
    a = fn.args
    return any(x.arg == PARAM for x in [*a.posonlyargs, *a.args, *a.kwonlyargs])


def param_uses_are_passthrough(fn: FuncDef, removable: set[str]) -> bool:
    """Every load of the parameter is the value of a ``source_id=`` keyword to a call of
    ``record`` or of a removable function (nested functions and lambdas included)."""
    ok_values: set[int] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            name = callee_name(node)
            if name == AUDIT_RECORD or name in removable:
                for kw in node.keywords:
                    if kw.arg == PARAM and isinstance(kw.value, ast.Name):
                        ok_values.add(id(kw.value))
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and node.id == PARAM and id(node) not in ok_values:
            return False
    return True


def find_removable(defs: dict[str, list[FuncDef]]) -> set[str]:
    removable = {n for n, fns in defs.items() if n not in NEVER and n != AUDIT_RECORD}
    changed = True
    while changed:
        changed = False
        for name in sorted(removable):
            if not all(param_uses_are_passthrough(fn, removable) for fn in defs[name]):
                removable.discard(name)
                changed = True
    return removable


def span_with_comma(src: Source, start: int, end: int) -> tuple[int, int]:
    """Widen [start, end) over one neighbouring comma (the following one, else the
    preceding one), so the argument list stays well formed."""
    text = src.text
    j = end
    while j < len(text) and text[j] in " \t\r\n":
        j += 1
    if j < len(text) and text[j] == ",":
        return start, j + 1
    i = start
    while i > 0 and text[i - 1] in " \t\r\n":
        i -= 1
    if i > 0 and text[i - 1] == ",":
        return i - 1, end
    return start, end


def node_span(src: Source, node: ast.AST) -> tuple[int, int]:
    return (
        src.pos(node.lineno, node.col_offset),  # type: ignore[attr-defined]
        src.pos(node.end_lineno, node.end_col_offset),  # type: ignore[attr-defined]
    )


def param_span(src: Source, fn: FuncDef) -> tuple[int, int]:
    a = fn.args
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        if arg.arg == PARAM:
            start, end = node_span(src, arg)
            if default is not None:
                end = node_span(src, default)[1]
            if len(a.kwonlyargs) == 1 and a.vararg is None:
                # The only keyword-only parameter: the bare ``*`` before it goes too.
                star = src.text.rindex("*", 0, start)
                return span_with_comma(src, star, end)
            return span_with_comma(src, start, end)
    positional = [*a.posonlyargs, *a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults))
    defaults += list(a.defaults)
    for arg, dflt in zip(positional, defaults, strict=True):
        if arg.arg == PARAM:
            start, end = node_span(src, arg)
            if dflt is not None:
                end = node_span(src, dflt)[1]
            return span_with_comma(src, start, end)
    raise AssertionError(f"{src.path}:{fn.lineno}: no {PARAM} parameter")


def positional_index(fn: FuncDef) -> int | None:
    positional = [x.arg for x in [*fn.args.posonlyargs, *fn.args.args]]
    return positional.index(PARAM) if PARAM in positional else None


def dead_locals(fn: FuncDef, dropped: set[int]) -> list[ast.Assign]:
    """Assignments ``name = <name, attribute or subscript>`` in ``fn`` that were read, but
    only inside dropped keyword values (``dropped``: ids of their nodes), so nothing reads
    them any more (``src = svc.settings.gateway.source_id``, then ``svc = request.app[...]``
    when that was its only use). Repeated until no more go."""
    gone: list[ast.Assign] = []
    dropped = set(dropped)
    while True:
        found = False
        for stmt in ast.walk(fn):
            if stmt in gone or not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
                continue
            target, value = stmt.targets[0], stmt.value
            if not isinstance(target, ast.Name):
                continue
            if not isinstance(value, ast.Name | ast.Attribute | ast.Subscript):
                continue  # a call may matter for its effect: leave it
            reads = [
                n
                for n in ast.walk(fn)
                if isinstance(n, ast.Name) and n.id == target.id and isinstance(n.ctx, ast.Load)
            ]
            writes = [
                n
                for n in ast.walk(fn)
                if isinstance(n, ast.Name) and n.id == target.id and isinstance(n.ctx, ast.Store)
            ]
            if reads and len(writes) == 1 and all(id(n) in dropped for n in reads):
                gone.append(stmt)
                dropped.update(id(n) for n in ast.walk(stmt))
                found = True
        if not found:
            return gone


def plan(root: Path) -> tuple[dict[Path, list[tuple[int, int]]], list[str], set[str]]:
    files = sorted(
        p for d in ("securemail", "tests") for p in (root / d).rglob("*.py") if p.is_file()
    )
    sources = [Source(p, t := p.read_text(encoding="utf-8"), ast.parse(t)) for p in files]
    defs: dict[str, list[FuncDef]] = defaultdict(list)
    all_defs: dict[str, list[FuncDef]] = defaultdict(list)
    for s in sources:
        if not s.path.is_relative_to(root / "securemail"):
            continue
        for node in ast.walk(s.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                all_defs[node.name].append(node)
                if has_param(node):
                    defs[node.name].append(node)
    # A name also defined without the parameter is ambiguous by last name: keep it.
    for name in list(defs):
        if len(all_defs[name]) != len(defs[name]):
            del defs[name]
    removable = find_removable(defs)
    problems: list[str] = []
    edits: dict[Path, list[tuple[int, int]]] = defaultdict(list)
    for s in sources:
        in_package = s.path.is_relative_to(root / "securemail")
        dropped: set[int] = set()
        for node in ast.walk(s.tree):
            if isinstance(node, ast.Call):
                name = callee_name(node)
                targets = removable | ({AUDIT_RECORD} if in_package else set())
                if name not in targets:
                    continue
                for kw in node.keywords:
                    if kw.arg == PARAM:
                        start, end = node_span(s, kw)
                        edits[s.path].append(span_with_comma(s, start, end))
                        dropped.add(id(kw.value))
                        dropped.update(id(n) for n in ast.walk(kw.value))
                if name in removable:
                    for fn in defs[name]:
                        idx = positional_index(fn)
                        if idx is not None and len(node.args) > idx:
                            problems.append(
                                f"{s.path}:{node.lineno}: {name}() gets {PARAM} positionally"
                            )
            elif (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name in removable
                and in_package
                and has_param(node)
            ):
                edits[s.path].append(param_span(s, node))
        for node in ast.walk(s.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for stmt in dead_locals(node, dropped):
                    start, end = node_span(s, stmt)
                    line_start = s.text.rfind("\n", 0, start) + 1
                    line_end = s.text.find("\n", end)
                    if s.text[line_start:start].strip() == "" and line_end != -1:
                        edits[s.path].append((line_start, line_end + 1))
                    else:
                        problems.append(f"{s.path}:{stmt.lineno}: dead local not on its own line")
    return edits, problems, removable


def apply(path: Path, spans: list[tuple[int, int]]) -> str:
    text = path.read_text(encoding="utf-8")
    merged: list[tuple[int, int]] = []
    for start, end in sorted(set(spans)):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    for start, end in reversed(merged):
        text = text[:start] + text[end:]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--write", action="store_true", help="rewrite the files")
    args = parser.parse_args(argv)
    edits, problems, removable = plan(args.root.resolve())
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if problems:
        return 2
    print(f"pass-through functions losing {PARAM}: {', '.join(sorted(removable)) or '-'}")
    rewritten: dict[Path, str] = {}
    for path, spans in sorted(edits.items()):
        print(f"{path.relative_to(args.root.resolve())}: {len(spans)} edit(s)")
        rewritten[path] = apply(path, spans)
        try:
            ast.parse(rewritten[path])
        except SyntaxError as exc:  # write nothing rather than half the files
            print(f"problem: {path}: the rewrite would not parse: {exc}", file=sys.stderr)
            return 2
    if args.write:
        for path, new in rewritten.items():
            path.write_text(new, encoding="utf-8")
    if not args.write:
        print("dry run: --write to apply")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
