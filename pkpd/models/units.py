"""Units of a model written in the model language, and the dimensional check of its equations.

A unit text such as ``"mg/L"``, ``"L/h"``, ``"1/h"``, ``"mg*h/L"``, ``"breaths/min"`` or ``"h^-1"`` is read into
a :class:`Unit`: exponents of base dimensions and a scale factor to the base units (g, L, h, mol). Known
names: masses ``kg g mg ug mcg µg ng pg``, volumes ``L dL mL uL µL``, times ``h hr min s d day wk``, amounts
of substance ``mol mmol umol µmol nmol``, ``%`` (0.01); ``1`` and ``fraction`` are dimensionless. Any other
name (``breaths``, ``NRS``, ``cells``) is a base dimension of its own, so ``breaths/min`` is checked
consistently without the module knowing what a breath is. A text that cannot be read (``"mg/L (free)"``)
counts as not declared.

:func:`check_equations` walks each equation's expression tree (:func:`pkpd.expr.parse_tree`) with the units
of the states (default mg), of the parameters declared in ``[structure.parameters]`` and of the quantities
defined before, and reports the first mismatch it can prove: terms of different units added, subtracted,
compared or passed to ``min``/``max``/``where`` together; a unit inside ``exp``/``log`` or raised to a
non-numeric power; a rate ``d/dt(X)`` whose right side is not in X's unit per hour (model time is in h).
Where a symbol's unit is not declared, nothing that depends on it is checked (no false alarms). A number
may carry a unit of its own (``-1.5*DEPOT``, 1.5 in 1/h; ``exp(-0.1*t)``), so a product with a number and the
time ``t`` are not checked either; a number added to a quantity takes its unit (``CP + 1e-9``).

>>> parse_unit("mg/L") == parse_unit("ug/mL")
True
>>> str(parse_unit("L/h") * parse_unit("mg/L"))
'mg/h'
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Unit", "parse_unit", "check_equations", "UnitMismatch", "DIMENSIONLESS"]

_BASE_ORDER = ("g", "L", "mol", "h")
_KNOWN: dict[str, tuple[str, float]] = {
    "kg": ("g", 1e3),
    "g": ("g", 1.0),
    "mg": ("g", 1e-3),
    "ug": ("g", 1e-6),
    "mcg": ("g", 1e-6),
    "µg": ("g", 1e-6),
    "μg": ("g", 1e-6),
    "ng": ("g", 1e-9),
    "pg": ("g", 1e-12),
    "L": ("L", 1.0),
    "l": ("L", 1.0),
    "dL": ("L", 0.1),
    "mL": ("L", 1e-3),
    "ml": ("L", 1e-3),
    "uL": ("L", 1e-6),
    "µL": ("L", 1e-6),
    "h": ("h", 1.0),
    "hr": ("h", 1.0),
    "min": ("h", 1.0 / 60.0),
    "s": ("h", 1.0 / 3600.0),
    "d": ("h", 24.0),
    "day": ("h", 24.0),
    "wk": ("h", 168.0),
    "mol": ("mol", 1.0),
    "mmol": ("mol", 1e-3),
    "umol": ("mol", 1e-6),
    "µmol": ("mol", 1e-6),
    "nmol": ("mol", 1e-9),
}
_DIMENSIONLESS_NAMES = {"1": 1.0, "fraction": 1.0, "%": 0.01, "": 1.0}


@dataclass(frozen=True)
class Unit:
    """A unit: ``dims`` (sorted ``(base, exponent)`` pairs, exponents non-zero) and ``scale`` to base units."""

    dims: tuple[tuple[str, float], ...] = ()
    scale: float = 1.0

    def __mul__(self, other: Unit) -> Unit:
        return _make({**dict(self.dims)}, other.dims, 1, self.scale * other.scale)

    def __truediv__(self, other: Unit) -> Unit:
        return _make({**dict(self.dims)}, other.dims, -1, self.scale / other.scale)

    def __pow__(self, k: float) -> Unit:
        return Unit(tuple((b, e * k) for b, e in self.dims), self.scale**k)

    def same(self, other: Unit) -> bool:
        """Same dimensions and the same scale (to 1e-9): quantities that can be added as numbers."""
        return self.dims == other.dims and math.isclose(self.scale, other.scale, rel_tol=1e-9)

    @property
    def dimensionless(self) -> bool:
        return not self.dims

    def __str__(self) -> str:
        names = {"g": "g", "L": "L", "mol": "mol", "h": "h"}
        prefix = {1e-3: "m", 1e-6: "u", 1e-9: "n", 1.0: ""}
        num = [(b, e) for b, e in self.dims if e > 0]
        den = [(b, -e) for b, e in self.dims if e < 0]
        # show the scale on the mass (mg, ug...) where it is a plain prefix, else as a factor
        scale, text_scale = self.scale, ""
        mass = dict(self.dims).get("g")
        if mass is not None and mass == int(mass):  # mg^2 rather than 1e-06*g^2
            p = next((p for p in prefix if math.isclose(scale, p**mass, rel_tol=1e-9)), None)
            if p is not None:
                names["g"], scale = prefix[p] + "g", 1.0
        if not math.isclose(scale, 1.0, rel_tol=1e-9):
            text_scale = f"{scale:g}*"

        def part(items: list[tuple[str, float]]) -> str:
            return "*".join(names.get(b, b) + ("" if e == 1 else f"^{e:g}") for b, e in items)

        top = part(num) or "1"
        text = top if not den else f"{top}/{part(den) if len(den) == 1 else '(' + part(den) + ')'}"
        return text_scale + text if text != "1" or not text_scale else text_scale.rstrip("*")


def _make(dims: dict[str, float], other: tuple[tuple[str, float], ...], sign: int, scale: float) -> Unit:
    for b, e in other:
        dims[b] = dims.get(b, 0.0) + sign * e
    order = {b: i for i, b in enumerate(_BASE_ORDER)}
    items = sorted(((b, e) for b, e in dims.items() if e != 0), key=lambda x: (order.get(x[0], 99), x[0]))
    return Unit(tuple(items), scale)


#: The unit of a pure number.
DIMENSIONLESS = Unit()
_HOUR = Unit((("h", 1.0),), 1.0)  # model time
_TOKEN = re.compile(r"\s*(?:(\*\*|\^)|([*/()·])|([-+]?\d+(?:\.\d+)?)|([A-Za-zµμ%][A-Za-z0-9_µμ%]*))")


def parse_unit(text: str | None) -> Unit | None:
    """The :class:`Unit` of a unit text, or ``None`` when it is empty or cannot be read (not declared)."""
    if text is None or not str(text).strip():
        return None
    s = str(text).strip()
    if s in _DIMENSIONLESS_NAMES:
        return Unit((), _DIMENSIONLESS_NAMES[s])
    toks: list[tuple[str, str]] = []
    pos = 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            return None
        pos = m.end()
        if m.group(1):
            toks.append(("pow", "^"))
        elif m.group(2):
            toks.append(("op", "*" if m.group(2) == "·" else m.group(2)))
        elif m.group(3):
            toks.append(("num", m.group(3)))
        else:
            toks.append(("name", m.group(4)))
    try:
        unit, k = _product(toks, 0)
    except (ValueError, IndexError):
        return None
    return unit if k == len(toks) else None


def _product(toks: list[tuple[str, str]], k: int) -> tuple[Unit, int]:
    unit, k = _power(toks, k)
    while k < len(toks) and toks[k] in (("op", "*"), ("op", "/")):
        op = toks[k][1]
        rhs, k = _power(toks, k + 1)
        unit = unit * rhs if op == "*" else unit / rhs
    return unit, k


def _power(toks: list[tuple[str, str]], k: int) -> tuple[Unit, int]:
    kind, val = toks[k]
    if kind == "num":
        unit, k = Unit((), float(val)), k + 1
    elif kind == "name":
        if val in _KNOWN:
            base, scale = _KNOWN[val]
            unit = Unit(((base, 1.0),), scale)
        elif val in _DIMENSIONLESS_NAMES:
            unit = Unit((), _DIMENSIONLESS_NAMES[val])
        else:
            unit = Unit(((val, 1.0),), 1.0)
        k += 1
    elif (kind, val) == ("op", "("):
        unit, k = _product(toks, k + 1)
        if toks[k] != ("op", ")"):
            raise ValueError("unbalanced parentheses")
        k += 1
    else:
        raise ValueError(f"unexpected {val!r}")
    if k < len(toks) and toks[k][0] == "pow":
        kind, val = toks[k + 1]
        if kind != "num":
            raise ValueError("an exponent must be a number")
        unit, k = unit ** float(val), k + 2
    return unit, k


class UnitMismatch(Exception):
    """A unit mismatch in an expression (the message says where; the caller adds the file and line)."""


class _Num:
    """A numeric literal: dimensionless in products, the unit of its partner in a sum."""


_NUM = _Num()
_Value = Unit | _Num | None


def _text(node: ast.AST) -> str:
    return ast.unparse(node)


def _unit_of(v: _Value) -> str:
    return "a number" if isinstance(v, _Num) else str(v)


class _Walker:
    def __init__(self, env: Mapping[str, Unit | None]):
        self.env = env

    def value(self, node: ast.AST) -> _Value:
        method: Callable[[ast.AST], _Value] | None = getattr(self, "v_" + type(node).__name__, None)
        return None if method is None else method(node)

    def v_Expression(self, node: ast.Expression) -> _Value:
        return self.value(node.body)

    def v_Constant(self, node: ast.Constant) -> _Value:
        return _NUM

    def v_Name(self, node: ast.Name) -> _Value:
        if node.id == "pi":
            return _NUM
        return self.env.get(node.id)

    def v_UnaryOp(self, node: ast.UnaryOp) -> _Value:
        v = self.value(node.operand)
        return DIMENSIONLESS if isinstance(node.op, ast.Not) else v

    def _same(self, a: _Value, b: _Value, how: str, na: ast.AST, nb: ast.AST) -> _Value:
        if a is None or b is None:
            return None
        if isinstance(a, _Num):
            return b
        if isinstance(b, _Num):
            return a
        if not a.same(b):
            raise UnitMismatch(f"{how} {_text(na)} (in {a}) and {_text(nb)} (in {b})")
        return a

    def v_BinOp(self, node: ast.BinOp) -> _Value:
        a, b = self.value(node.left), self.value(node.right)
        if isinstance(node.op, (ast.Add, ast.Sub)):
            how = "adds" if isinstance(node.op, ast.Add) else "subtracts"
            return self._same(a, b, how, node.left, node.right)
        if isinstance(node.op, ast.Pow):
            return self._power(a, node.right, b, node)
        if isinstance(a, _Num) and isinstance(b, _Num):
            return _NUM
        if a is None or b is None or isinstance(a, _Num) or isinstance(b, _Num):
            return None  # a number may carry a unit of its own (-1.5*DEPOT: 1.5 in 1/h): not checked
        return a * b if isinstance(node.op, ast.Mult) else a / b

    def _power(self, a: _Value, exp_node: ast.AST, b: _Value, node: ast.AST) -> _Value:
        if isinstance(a, _Num) and isinstance(b, _Num):
            return _NUM
        k = _number(exp_node)
        if isinstance(b, Unit) and not b.dimensionless:
            raise UnitMismatch(f"the exponent of {_text(node)} is in {b}; an exponent is a pure number")
        if a is None or isinstance(a, _Num):
            return None if a is None else DIMENSIONLESS
        if k is None:
            if not a.dimensionless:
                raise UnitMismatch(f"{_text(node)} raises a quantity in {a} to a non-numeric power")
            return DIMENSIONLESS
        return a**k

    def v_Compare(self, node: ast.Compare) -> _Value:
        left = node.left
        for right in node.comparators:
            self._same(self.value(left), self.value(right), "compares", left, right)
            left = right
        return DIMENSIONLESS

    def v_BoolOp(self, node: ast.BoolOp) -> _Value:
        for v in node.values:
            self.value(v)
        return DIMENSIONLESS

    def v_IfExp(self, node: ast.IfExp) -> _Value:
        self.value(node.test)
        return self._same(self.value(node.body), self.value(node.orelse), "chooses between", node.body, node.orelse)

    def v_Call(self, node: ast.Call) -> _Value:
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        args = [self.value(a) for a in node.args]
        if name in ("exp", "log", "log10"):
            a = args[0]
            if isinstance(a, Unit) and not a.dimensionless:
                raise UnitMismatch(f"{_text(node)}: the argument of {name} is in {a}; it must be a pure number")
            return None if a is None else DIMENSIONLESS
        if name == "sqrt":
            a = args[0]
            return a**0.5 if isinstance(a, Unit) else a
        if name in ("abs", "floor", "ceil"):
            return args[0]
        if name in ("min", "max"):
            return self._same(args[0], args[1], f"{name} of", node.args[0], node.args[1])
        if name == "pow":
            return self._power(args[0], node.args[1], args[1], node)
        if name == "where":
            return self._same(args[1], args[2], "chooses between", node.args[1], node.args[2])
        return None


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _number(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    return None


def check_equations(
    equations: list[tuple[str, str, ast.expr]],
    state_units: Mapping[str, str],
    parameter_units: Mapping[str, str],
    time_symbol: str = "t",
) -> tuple[int, str] | None:
    """The first unit mismatch of a model's equations, as ``(equation index, message)``, or ``None``.

    Parameters
    ----------
    equations
        ``(kind, lhs, tree)`` in the order written: kind ``"ode"`` (``d/dt(lhs) = tree``) or ``"def"``/``"out"``
        (``lhs = tree``, a defined quantity whose unit is inferred for the equations after it).
    state_units, parameter_units
        Unit texts (an empty or unreadable text: not declared, not checked).
    time_symbol
        The model's time variable (h).
    """
    env: dict[str, Unit | None] = {k: parse_unit(u) for k, u in parameter_units.items()}
    env.update({k: parse_unit(u) for k, u in state_units.items()})
    env[time_symbol] = None  # t appears with numbers that carry units (exp(-0.1*t)): not checked
    walker = _Walker(env)
    for i, (kind, lhs, tree) in enumerate(equations):
        try:
            v = walker.value(tree)
        except UnitMismatch as exc:
            return i, str(exc)
        if kind == "ode":
            su = env.get(lhs)
            if su is None or v is None or isinstance(v, _Num):
                continue
            want = su / _HOUR
            if not v.same(want):
                return i, (
                    f"the right side is in {v}, but d/dt({lhs}) must be in {want} ({lhs} in {su}, model time in h)"
                )
        else:
            env[lhs] = DIMENSIONLESS if isinstance(v, _Num) else v
    return None
