"""CSV for spreadsheets: every export of ours writes through ``writer`` here.

Owns formula neutralisation (OWASP "CSV injection"): a text cell that a spreadsheet would
read as a formula or a command (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return) gets a leading apostrophe, so ``=HYPERLINK(...)`` in an organisation's
name shows as text. Numbers stay numbers.

Invariant: no cell written by ``writer`` starts with one of FORMULA_STARTS.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """The value as it may go into a spreadsheet: text that would start a formula quoted."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SafeWriter:
    """csv.writer's writerow/writerows, every cell through ``cell``."""

    def __init__(self, out: TextIO) -> None:
        self._w = csv.writer(out, lineterminator="\r\n")

    def writerow(self, row: Iterable[Any]) -> None:
        self._w.writerow([cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(out: TextIO) -> SafeWriter:
    """An RFC 4180 writer (CRLF line ends) that neutralises formulas."""
    return SafeWriter(out)
