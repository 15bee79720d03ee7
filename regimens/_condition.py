"""Patient-covariate conditions such as ``"AGE >= 65 or WT < 50 or CRCL < 60"``.

A condition is a disjunction (``or``) of conjunctions (``and``) of comparisons ``COLUMN OP NUMBER``, where
``COLUMN`` is a dataset covariate column (:data:`KNOWN_COVARIATES`, case-insensitive on input, stored in
upper case) and ``OP`` one of ``< <= > >= == !=``. ``and`` binds tighter than ``or``; there are no
parentheses. Conditions are parsed by a small tokenizer, never by ``eval``; the canonical text
(:meth:`Condition.text`, e.g. ``"AGE >= 65 or WT < 50"``) is what regimens store, so that text and TOML
round trips are exact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pkpd.errors import PKPDError

__all__ = ["KNOWN_COVARIATES", "Comparison", "Condition", "ConditionError", "RegimenError", "format_number"]


class RegimenError(PKPDError):
    """A regimen, one of its items, a regimen file or a regimen check is invalid.

    The message names the item (and the line number for text input) and says what to write instead.
    """


class ConditionError(RegimenError):
    """A covariate condition cannot be parsed, or a covariate it needs is missing."""


#: Covariate columns a condition may test (the dataset columns produced by the patient module; see the
#: project conventions): units as in the dataset (AGE years, WT kg, CRCL mL/min, HEPATIC 0-3...).
KNOWN_COVARIATES: tuple[str, ...] = (
    "AGE",
    "MALE",
    "WT",
    "HT",
    "BMI",
    "LBM",
    "FFM",
    "IBW",
    "SCR",
    "CRCL",
    "HEPATIC",
    "CYP2D6_AS",
    "CYP2D6_10_10",
    "CYP2C9_AS",
    "OPRM1_G",
)

_OPS = ("<=", ">=", "==", "!=", "<", ">")
_TOKEN = re.compile(
    r"\s*(?:(?P<op><=|>=|==|!=|<|>|=)|(?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>\S))"
)
_EXAMPLE = "AGE >= 65 or WT < 50 or CRCL < 60"


def format_number(x: float) -> str:
    """Shortest text that reads back as exactly ``x``: ``30`` for 30.0, ``0.25``, ``-0.5``, ``1e-07``."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


@dataclass(frozen=True)
class Comparison:
    """One comparison ``column op value`` (e.g. ``AGE >= 65``)."""

    column: str
    op: str
    value: float

    def holds(self, x: float) -> bool:
        """Whether the comparison holds for covariate value ``x``."""
        v = self.value
        return {"<": x < v, "<=": x <= v, ">": x > v, ">=": x >= v, "==": x == v, "!=": x != v}[self.op]

    def __str__(self) -> str:
        return f"{self.column} {self.op} {format_number(self.value)}"


@dataclass(frozen=True)
class Condition:
    """A parsed condition: ``clauses`` is a disjunction of conjunctions of :class:`Comparison`.

    Build it with :meth:`parse`.
    """

    clauses: tuple[tuple[Comparison, ...], ...]

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse ``text`` (e.g. ``"AGE>=65 or WT<50"``).

        Raises
        ------
        ConditionError
            With the offending token and a valid example, on any syntax error or an unknown covariate.
        """
        if not isinstance(text, str) or not text.strip():
            raise ConditionError(f"empty condition {text!r}; write e.g. {_EXAMPLE!r}")
        toks: list[tuple[str, str]] = []
        for m in _TOKEN.finditer(text):
            kind = m.lastgroup
            assert kind is not None
            toks.append((kind, m.group(kind)))
        clauses: list[tuple[Comparison, ...]] = []
        conj: list[Comparison] = []
        i = 0

        def fail(tok: str | None, why: str) -> ConditionError:
            at = f" at {tok!r}" if tok is not None else " at end of condition"
            return ConditionError(
                f"cannot read condition {text.strip()!r}{at}: {why}; write e.g. {_EXAMPLE!r} "
                "(comparisons 'COLUMN OP NUMBER' joined by 'and'/'or')"
            )

        while True:
            if i >= len(toks):
                raise fail(None, "expected a covariate column")
            kind, tok = toks[i]
            if kind != "word" or tok.lower() in ("and", "or"):
                raise fail(tok, "expected a covariate column such as AGE, WT or CRCL")
            col = tok.upper()
            if col not in KNOWN_COVARIATES:
                raise ConditionError(
                    f"unknown covariate {tok!r} in condition {text.strip()!r}; known covariate "
                    f"columns: {', '.join(KNOWN_COVARIATES)}"
                )
            if i + 1 >= len(toks):
                raise fail(None, f"expected a comparison operator after {tok}")
            kind, op = toks[i + 1]
            if op == "=":
                raise fail(op, "use '==' for equality")
            if kind != "op":
                raise fail(op, f"expected a comparison operator ({' '.join(_OPS)})")
            if i + 2 >= len(toks):
                raise fail(None, f"expected a number after {tok} {op}")
            kind, num = toks[i + 2]
            if kind != "num":
                raise fail(num, "expected a number")
            value = float(num)
            if not math.isfinite(value):
                raise fail(num, "the number must be finite")
            conj.append(Comparison(col, op, value))
            i += 3
            if i >= len(toks):
                break
            kind, word = toks[i]
            if kind == "word" and word.lower() == "and":
                i += 1
            elif kind == "word" and word.lower() == "or":
                clauses.append(tuple(conj))
                conj = []
                i += 1
            else:
                raise fail(word, "expected 'and' or 'or' between comparisons")
        clauses.append(tuple(conj))
        return cls(tuple(clauses))

    @property
    def text(self) -> str:
        """Canonical text, e.g. ``"AGE >= 65 or WT < 50"``."""
        return " or ".join(" and ".join(str(c) for c in conj) for conj in self.clauses)

    def __str__(self) -> str:
        return self.text

    @property
    def columns(self) -> tuple[str, ...]:
        """Covariate columns the condition reads (sorted, unique)."""
        return tuple(sorted({c.column for conj in self.clauses for c in conj}))

    def missing(self, covariates: Mapping[str, Any]) -> list[str]:
        """Columns the condition needs that ``covariates`` lacks (or holds as NaN)."""
        out = []
        for col in self.columns:
            try:
                v = float(covariates[col])
            except (KeyError, IndexError, TypeError, ValueError):
                out.append(col)
                continue
            if math.isnan(v):
                out.append(col)
        return out

    def evaluate(self, covariates: Mapping[str, Any], *, what: str = "condition") -> bool:
        """Whether the condition holds for ``covariates``.

        Raises
        ------
        ConditionError
            If a needed covariate is missing; ``what`` names the item in the message.
        """
        missing = self.missing(covariates)
        if missing:
            raise ConditionError(
                f"{what}: condition {self.text!r} needs covariate"
                f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}, which the patient "
                f"covariates lack (given: {', '.join(sorted(map(str, covariates))) or 'none'})"
            )
        return any(all(c.holds(float(covariates[c.column])) for c in conj) for conj in self.clauses)

    def satisfied(self, covariates: Mapping[str, Any]) -> tuple[Comparison, ...]:
        """The comparisons of the first true conjunction (empty if the condition is false)."""
        for conj in self.clauses:
            if all(c.holds(float(covariates[c.column])) for c in conj):
                return conj
        return ()
