"""CSV cells that spreadsheets cannot run, and read back as they were written.

Every CSV vstore writes (``failures.csv``, ``predictions.csv``, ``downloaded.csv``) goes
through ``safe_row``; every one it reads back goes through ``plain_row``.

OWASP's rule against CSV (formula) injection: a cell beginning with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return is prefixed with a single quote, which spreadsheets show as text
(numbers given as numbers are exempt: their text is a number, never a formula).
To make the rule reversible, a cell already beginning with a quote followed by one of those
characters (or by a second quote) gets one more quote; ``plain_cell`` removes exactly one.
Cells written by other tools (a quote before ordinary text) read back unchanged.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == "'" and (value[1] in FORMULA_STARTS or value[1] == "'")


def safe_cell(value: object) -> str:
    """``value`` as a CSV cell that a spreadsheet shows as text, never evaluates. Numbers
    (``int``/``float`` and NumPy's, not strings that look like them) are written as they are:
    ``-0.5`` is a number to a spreadsheet, not a formula, and quoting it would make every
    negative score, offset or coordinate a string to pandas and to spreadsheets alike."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return str(value)
    s = str(value)
    if s.startswith(FORMULA_STARTS) or _quoted(s) or s == "'":
        return "'" + s
    return s


def plain_cell(value: str) -> str:
    """The value ``safe_cell`` was given (other cells unchanged)."""
    return value[1:] if _quoted(value) else value


def safe_row(values: Iterable[object]) -> list[str]:
    return [safe_cell(v) for v in values]


def plain_row(values: Iterable[str]) -> list[str]:
    return [plain_cell(v) for v in values]
