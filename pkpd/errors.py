"""Exception hierarchy of the toolkit.

Every error a user can provoke with bad input derives from :class:`PKPDError`, so the CLI can catch one
type, print the message and exit non-zero without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PKPDError",
    "ModelSpecError",
    "ExpressionError",
    "DatasetError",
    "DatasetViolation",
    "SolverError",
    "GridError",
]


class PKPDError(Exception):
    """Base class of every error raised on bad user input or a failed computation."""


class ModelSpecError(PKPDError):
    """A model or parameter specification is malformed (unknown model, missing parameter, bad unit...)."""


class ExpressionError(ModelSpecError):
    """A parameter expression cannot be parsed, uses a forbidden construct, or references an unknown name."""


class SolverError(PKPDError):
    """A numerical solver failed (step limit reached, non-finite state, non-convergent steady state)."""


class GridError(PKPDError, ValueError):
    """An output time grid (``pkpd simulate --grid START:END:STEP``, ``grid=`` of :func:`pkpd.simulate`) is
    malformed: not numbers, END <= START, STEP <= 0, or too many points."""


def rows_text(rows, limit: int = 20) -> str:
    """``"row 3"`` / ``"rows 3, 5, 9 (+12 more)"``: 1-based row numbers as messages give them, the first
    ``limit`` shown."""
    rows = list(rows)
    more = f" (+{len(rows) - limit} more)" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} " + ", ".join(str(r) for r in rows[:limit]) + more


@dataclass(frozen=True)
class DatasetViolation:
    """One problem found in a NONMEM-format dataset.

    Attributes
    ----------
    rows
        1-based data-row numbers (the header is not counted; data row 1 is line 2 of a CSV file).
        Empty when the problem concerns the whole dataset (e.g. a missing column).
    column
        The column concerned, or ``None``.
    message
        What is wrong and what to do about it.
    """

    rows: tuple[int, ...]
    column: str | None
    message: str

    def __str__(self) -> str:
        where = rows_text(self.rows) if self.rows else ""
        col = f"column {self.column}" if self.column else ""
        head = ", ".join(p for p in (where, col) if p)
        return f"{head}: {self.message}" if head else self.message


class DatasetError(PKPDError):
    """A dataset failed validation. ``violations`` lists every problem found, each with its rows."""

    def __init__(self, violations: list[DatasetViolation], source: str | None = None):
        self.violations = list(violations)
        self.source = source
        n = len(self.violations)
        title = f"Dataset {source!s} is invalid" if source else "Dataset is invalid"
        lines = [f"{title}: {n} problem{'s' if n != 1 else ''} found"]
        lines += [f"  - {v}" for v in self.violations]
        super().__init__("\n".join(lines))
