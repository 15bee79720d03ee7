"""Models users write themselves: the ``[structure]`` section of a model or parameter file (TOML).

A user model is written as text a pharmacologist reads without Python, in the same TOML files as the
parameters (docs/model_language.md gives the grammar and worked examples)::

    [structure]
    name = "my_1cmt_oral"                 # optional; default: the file name without .toml
    states = ["DEPOT", "CENTRAL"]         # CMT 1, 2, ... in this order; amounts (mg) start at 0
    doses = ["DEPOT", "CENTRAL"]          # states a dose record (CMT) may target; default: all
    equations = [
      "KE = CL/V",                        # a defined quantity (may use states, parameters, t)
      "d/dt(DEPOT) = -KA*DEPOT",
      "d/dt(CENTRAL) = KA*DEPOT - KE*CENTRAL",
    ]
    outputs = ["CP = CENTRAL/V"]          # algebraic outputs (observations refer to them by name)

    [structure.parameters]                # optional: units, descriptions, lower bounds
    CL = { unit = "L/h", description = "clearance" }
    V = "L"

Every expression goes through the safe parser :mod:`pkpd.expr` (never ``eval``). The model is compiled
once into the :class:`~pkpd.models.CompartmentModel` representation the engine consumes, so doses, lags,
bioavailability, infusions, steady state and resets work exactly as for built-in models.

**Linearity** is decided symbolically: every right-hand side (defined quantities substituted) must be a
sum of ``coefficient * STATE`` terms whose coefficients reference parameters only (no state, no time
``t``) and no state-free term. Such a model gets rate-matrix terms and the exact matrix-exponential
solver (``solver="auto"``), when in addition its strongly connected blocks have at most 3 states and
real eigenvalues at random parameter points, and a numerical check at random states and parameters
agrees with the symbolic rate matrix. Anything else is integrated as an ODE; a nonlinear model is never
sent to the exact solver.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ExpressionError, ModelSpecError
from ..expr import compile_expression, compile_tree, parse_tree
from ._base import CompartmentModel, Param, Route
from .registry import BUILTIN_NAME, REGISTRY
from .units import check_equations

if TYPE_CHECKING:
    from jax import Array

# fn(env, xp): a compiled expression of the names in env, evaluated with xp = numpy or jax.numpy
_Fn = Callable[[Mapping[str, Any], Any], Any]

__all__ = ["UserModel", "compile_structure", "load_user_model", "strongly_connected", "structure_from_file"]

TIME_SYMBOL = "t"
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_ODE = re.compile(r"^\s*d\s*/\s*dt\s*\(\s*([^()]*?)\s*\)\s*=(?!=)(.*)$", re.S)
_DEF = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)(.*)$", re.S)
_DOSE_PARAM = re.compile(r"^(F|ALAG|R|D)(\d+)$")
_STRUCT_KEYS = {"name", "description", "states", "doses", "central", "equations", "outputs", "parameters", "split"}
_SPLIT = re.compile(
    r"^\s*(?:(1)|(1\s*-\s*)?([A-Za-z][A-Za-z0-9_]*))\s*->\s*([A-Za-z][A-Za-z0-9_]*)"
    r"(?:\s+over\s+([A-Za-z][A-Za-z0-9_]*))?\s*$"
)
_STATE_KEYS = {"name", "unit", "description", "init"}
_PARAM_KEYS = {"unit", "description", "lower"}
_CACHE: dict[str, "UserModel"] = {}


@dataclass(frozen=True)
class _Eq:
    kind: str  # "ode" | "def" | "out"
    lhs: str
    rhs: str
    text: str
    where: str  # "line 12" or "equations[3]"
    names: frozenset[str]


@dataclass(frozen=True, eq=False)
class UserModel(CompartmentModel):
    """A :class:`~pkpd.models.CompartmentModel` compiled from a ``[structure]`` section.

    Besides the attributes of :class:`CompartmentModel` (``linear_terms`` empty and ``nonlinear`` set when
    the model is not linear; ``volume`` unused: outputs are expressions):

    Attributes
    ----------
    state_units
        Unit of each state (default ``"mg"``).
    dose_states
        0-based indices of the states that may receive doses.
    output_fns
        Output name -> ``fn(env, xp)`` of states and parameters (defined quantities substituted).
    output_units
        Output name -> unit text (may be empty).
    equations
        The equations as written (for :meth:`describe` and error messages).
    symbol_lines
        Parameter name -> ``(where, equation text)`` of its first use, to name the line of an unknown symbol.
    linear_reason
        Why the model is integrated as an ODE (empty when it is linear).
    source
        The file the model was read from, if any.
    rhs_fn
        The whole right-hand side ``g(t, x, p) -> dx/dt`` (amount/h), without dose inputs.
    """

    state_units: tuple[str, ...] = ()
    dose_states: tuple[int, ...] = ()
    output_fns: Mapping[str, _Fn] = field(default_factory=dict)
    output_units: Mapping[str, str] = field(default_factory=dict)
    equations: tuple[str, ...] = ()
    symbol_lines: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    linear_reason: str = ""
    source: str | None = None
    rhs_fn: Callable[..., Any] | None = None  # the full right-hand side g(t, x, p) (both paths; for checks and tools)

    def output_names(self) -> tuple[str, ...]:
        return tuple(self.output_fns)

    def output_parameters(self) -> set[str]:
        return set(self.param_names)

    def outputs_from_state(self, x: Any, p: Mapping[str, Any]) -> dict[str, Any]:
        """Named outputs (``[structure] outputs``) from a state ``x`` (..., n_cmt) and parameters ``p``."""
        xp = _xp_of([x, *p.values()])
        env = dict(p)
        for i, s in enumerate(self.compartments):
            env[s] = x[..., i]
        return {k: fn(env, xp) for k, fn in self.output_fns.items()}

    def vector_field(self, t: Any, x: Array, p: Mapping[str, Any], rate: Any, forcing: Any = None) -> Array:
        """``dx/dt`` at absolute time ``t`` (h) with infusion rates ``rate`` (per state, amount/h)."""
        if self.nonlinear is None:
            dx: Array = self.rate_matrix(p) @ x + rate
            return dx
        dx = self.nonlinear(t, x, p, forcing) + rate
        return dx

    def describe(self) -> str:
        lines = [
            f"{self.name}: {self.description or 'user-written model'}" + (f" ({self.source})" if self.source else ""),
            f"  states: {self.compartment_table()}",
            f"  doses into: {', '.join(f'{i + 1}={self.compartments[i]}' for i in self.dose_states)}",
            f"  solver: {'exact (linear)' if self.is_linear else 'ODE (' + self.linear_reason + ')'}",
        ]
        for q in self.params:  # units and descriptions as [structure.parameters] gives them
            lines.append(
                f"  {q.name:6s}" + (f" [{q.unit}]" if q.unit else "") + (f" {q.description}" if q.description else "")
            )
        for e in self.equations:
            lines.append(f"  {e}")
        for c, rs in self.routes.items():
            parts = []
            for rt in rs:
                frac = "1" if rt.fraction is None else (f"1 - {rt.fraction}" if rt.complement else rt.fraction)
                parts.append(
                    f"{frac} -> {self.compartments[rt.target]}" + (f" over {rt.duration}" if rt.duration else "")
                )
            lines.append(f"  split {self.compartments[c]}: {', '.join(parts)}")
        return "\n".join(lines)


def _xp_of(values: Any) -> Any:
    import jax

    if any(isinstance(v, jax.Array) for v in values):
        import jax.numpy as jnp

        return jnp
    return np


# ---------------------------------------------------------------------------------------------------
# reading


def _line_of(text: str | None, snippet: str, start: int = 0) -> int | None:
    if not text:
        return None
    key = snippet.strip()
    for i, line in enumerate(text.splitlines()[start:], start + 1):
        if key and key in line:
            return i
    first = key.splitlines()[0].strip() if key else ""
    for i, line in enumerate(text.splitlines()[start:], start + 1):
        if first and first in line:
            return i
    return None


def _section_line(text: str | None) -> int:
    if not text:
        return 0
    for i, line in enumerate(text.splitlines()):
        if line.strip().startswith("[structure"):
            return i
    return 0


class _Ctx:
    def __init__(self, where: str, text: str | None):
        self.where, self.text = where, text
        self.start = _section_line(text)

    def fail(self, msg: str, snippet: str | None = None, item: str | None = None) -> ModelSpecError:
        line = _line_of(self.text, snippet, self.start) if snippet else None
        loc = f", line {line}" if line else (f", {item}" if item else "")
        return ModelSpecError(f"{self.where} [structure]{loc}: {msg}")

    def loc(self, snippet: str, item: str) -> str:
        line = _line_of(self.text, snippet, self.start)
        return f"line {line}" if line else item


def _string_list(ctx: _Ctx, table: Mapping[str, Any], key: str, required: bool) -> list[Any]:
    v = table.get(key)
    if v is None:
        if required:
            raise ctx.fail(f"needs `{key}`, a list (see docs/model_language.md)")
        return []
    if isinstance(v, str) or not isinstance(v, list):
        raise ctx.fail(f'`{key}` must be a list such as ["...", "..."], not {type(v).__name__}', key)
    return v


def compile_structure(
    table: Mapping[str, Any],
    *,
    name: str | None = None,
    where: str = "model",
    text: str | None = None,
    source: str | None = None,
    known: set[str] | None = None,
) -> UserModel:
    """Compile a ``[structure]`` table into a :class:`UserModel` (cached: the same table gives the same object).

    Parameters
    ----------
    table
        The ``[structure]`` table as read from TOML (see the module docstring).
    name
        Model name when the table has no ``name`` (e.g. the file name without ``.toml``).
    where
        How error messages name the file (``"model file x.toml"``).
    text
        The file's text, to give line numbers in error messages.
    source
        The file path, kept on the model for :meth:`UserModel.describe`.
    known
        Names the surrounding file defines as parameters (``[parameters]``, ``[derived]``): with it, a
        symbol of an equation that is neither a state, a defined quantity nor one of these is an error
        ("unknown symbol") naming its line.

    Returns
    -------
    UserModel

    Raises
    ------
    ModelSpecError
        On a malformed section, with the line (or list entry) and the symbol at fault.
    """
    ctx = _Ctx(where, text)
    if not isinstance(table, Mapping):
        raise ctx.fail("must be a table")
    bad = sorted(set(table) - _STRUCT_KEYS)
    if bad:
        raise ctx.fail(f"unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(_STRUCT_KEYS))}", bad[0])
    mname = str(table.get("name") or name or "user_model")
    if BUILTIN_NAME.match(mname):
        raise ctx.fail(
            f"model name {mname!r} is reserved by the built-in grammar (e.g. 1cmt_oral); choose another `name`", "name"
        )
    key = hashlib.sha256(json.dumps([mname, table, source], sort_keys=True, default=str).encode()).hexdigest()
    if key in _CACHE:
        return _check_known(_CACHE[key], known, ctx)

    # ---- states -------------------------------------------------------------------------------------
    states, units = [], []
    for i, s in enumerate(_string_list(ctx, table, "states", True)):
        item = f"states[{i}]"
        if isinstance(s, Mapping):
            badk = sorted(set(s) - _STATE_KEYS)
            if badk:
                raise ctx.fail(
                    f"state entry has unknown key(s) {', '.join(badk)}; allowed: {', '.join(sorted(_STATE_KEYS))}",
                    None,
                    item,
                )
            if "name" not in s:
                raise ctx.fail("a state table needs `name`", None, item)
            init = s.get("init", 0)
            if not isinstance(init, (int, float)) or init != 0:
                raise ctx.fail(
                    f"state {s['name']}: initial condition {init!r} is not supported yet (states start "
                    "at 0 and return to 0 at a reset); write the state as its distance from baseline, "
                    "e.g. DEPRESSION = BASELINE - RESPONSE (docs/model_language.md)",
                    str(s["name"]),
                    item,
                )
            sname, unit = str(s["name"]), str(s.get("unit", "mg"))
        elif isinstance(s, str):
            sname, unit = s.strip(), "mg"
        else:
            raise ctx.fail(f"a state must be a name or a table {{ name = ..., unit = ... }}, got {s!r}", None, item)
        if not _IDENT.match(sname):
            raise ctx.fail(
                f"state name {sname!r} must be an identifier (a letter, then letters, digits, _)", sname, item
            )
        if sname in states:
            raise ctx.fail(f"state {sname} is listed twice", sname, item)
        if sname == TIME_SYMBOL:
            raise ctx.fail(f"'{TIME_SYMBOL}' is time (h) and cannot be a state", sname, item)
        states.append(sname)
        units.append(unit)
    if not states:
        raise ctx.fail("`states` is empty: list at least one state")
    n = len(states)
    sidx = {s: i for i, s in enumerate(states)}

    # ---- doses --------------------------------------------------------------------------------------
    doses = table.get("doses")
    if doses is None:
        dose_states = tuple(range(n))
    else:
        if isinstance(doses, str):
            doses = [doses]
        if not isinstance(doses, list):
            raise ctx.fail("`doses` must be a list of state names", "doses")
        chosen: list[int] = []
        for d in doses:
            if str(d) not in sidx:
                raise ctx.fail(
                    f"doses name {d}, which is not a state (states: {', '.join(states)}): a dose "
                    "can only go into a state that exists",
                    f'"{d}"' if text and f'"{d}"' in text else "doses",
                )
            chosen.append(sidx[str(d)])
        dose_states = tuple(sorted(set(chosen)))
    central_name = table.get("central")
    if central_name is not None and str(central_name) not in sidx:
        raise ctx.fail(f"central names {central_name}, which is not a state (states: {', '.join(states)})", "central")
    central = (
        sidx[str(central_name)]
        if central_name is not None
        else sidx.get("CENTRAL", dose_states[0] if dose_states else 0)
    )

    # ---- parameters declared -------------------------------------------------------------------------
    decl_raw = table.get("parameters")
    declared: dict[str, tuple[str, str, float]] | None = None
    if decl_raw is not None:
        declared = {}
        if isinstance(decl_raw, list):
            decl_raw = {str(k): {} for k in decl_raw}
        if not isinstance(decl_raw, Mapping):
            raise ctx.fail(
                "`parameters` must be a table NAME = { unit = ..., description = ... } or a list of names", "parameters"
            )
        for pname, d in decl_raw.items():
            if isinstance(d, str):
                d = {"unit": d}
            if not isinstance(d, Mapping) or set(d) - _PARAM_KEYS:
                raise ctx.fail(
                    f"parameter {pname}: expected a unit string or a table with keys {', '.join(sorted(_PARAM_KEYS))}",
                    f"{pname} =",
                )
            if not _IDENT.match(pname) or pname in sidx:
                raise ctx.fail(f"parameter name {pname!r} must be an identifier that is not a state", f"{pname} =")
            declared[pname] = (str(d.get("unit", "")), str(d.get("description", "")), float(d.get("lower", -np.inf)))

    # ---- equations and outputs -------------------------------------------------------------------------
    eqs: list[_Eq] = []
    for key_, kind in (("equations", None), ("outputs", "out")):
        for i, raw in enumerate(_string_list(ctx, table, key_, key_ == "equations")):
            item = f"{key_}[{i}]"
            if not isinstance(raw, str):
                raise ctx.fail(
                    f'each entry of `{key_}` must be a string such as "d/dt(CENTRAL) = ...", got {raw!r}', None, item
                )
            loc = ctx.loc(raw.strip().splitlines()[0] if raw.strip() else raw, item)
            m = _ODE.match(raw) if kind is None else None
            if m:
                lhs, rhs, k = m.group(1).strip(), m.group(2), "ode"
                if lhs not in sidx:
                    hint = f"states: {', '.join(states)}"
                    raise ModelSpecError(
                        f"{where} [structure], {loc}: equation {raw.strip()!r}: undefined state "
                        f"{lhs!r} in d/dt({lhs}) ({hint}); add it to `states`"
                    )
            elif kind == "out" and _IDENT.match(raw.strip()):  # an output that is a defined quantity: "CP"
                lhs = raw.strip()
                eqs.append(_Eq("ref", lhs, lhs, lhs, loc, frozenset({lhs})))
                continue
            else:
                m = _DEF.match(raw)
                if not m:
                    what = (
                        "'d/dt(STATE) = expression' or 'NAME = expression'" if kind is None else "'NAME = expression'"
                    )
                    if kind is None and re.match(r"^\s*d\s*/\s*dt", raw):
                        what = "'d/dt(STATE) = expression' (one state name in the parentheses)"
                    raise ModelSpecError(
                        f"{where} [structure], {loc}: syntax error in {raw.strip()!r}: expected {what}"
                    )
                lhs, rhs, k = m.group(1), m.group(2), (kind or "def")
                if lhs in sidx:
                    raise ModelSpecError(
                        f"{where} [structure], {loc}: {raw.strip()!r} assigns state {lhs}; write "
                        f"its rate as d/dt({lhs}) = ..."
                    )
                if lhs == TIME_SYMBOL or lhs == "pi" or lhs.startswith("_"):
                    raise ModelSpecError(f"{where} [structure], {loc}: {lhs!r} is reserved and cannot be assigned")
            try:
                ex = compile_expression(rhs)
            except ExpressionError as exc:
                raise ModelSpecError(f"{where} [structure], {loc}: equation {raw.strip()!r}: {exc}") from None
            eqs.append(_Eq(k, lhs, rhs, raw.strip(), loc, ex.names))

    # ---- symbols ------------------------------------------------------------------------------------
    defined: dict[str, _Eq] = {}
    odes: dict[str, _Eq] = {}
    params_used: dict[str, tuple[str, str]] = {}
    all_defs = {e.lhs for e in eqs if e.kind in ("def", "out")}
    for e in eqs:
        if e.kind == "ref":
            if e.lhs not in defined:
                raise ModelSpecError(
                    f"{where} [structure], {e.where}: output {e.lhs} is not a quantity defined in "
                    f'`equations`; write "{e.lhs} = expression"'
                )
            continue
        for nm in sorted(e.names):
            if nm in sidx or nm == TIME_SYMBOL or nm in defined:
                continue
            if nm in all_defs:
                raise ModelSpecError(
                    f"{where} [structure], {e.where}: equation {e.text!r}: {nm} is used before it "
                    "is defined; define it earlier in `equations`"
                )
            if declared is not None and nm not in declared:
                raise ModelSpecError(
                    f"{where} [structure], {e.where}: equation {e.text!r}: unknown symbol {nm} "
                    f"(not a state, a defined quantity or a parameter of [structure.parameters])"
                )
            params_used.setdefault(nm, (e.where, e.text))
        if e.kind == "ode":
            if e.lhs in odes:
                raise ModelSpecError(
                    f"{where} [structure], {e.where}: d/dt({e.lhs}) is written twice (first at {odes[e.lhs].where})"
                )
            odes[e.lhs] = e
        else:
            if e.lhs in defined:
                raise ModelSpecError(
                    f"{where} [structure], {e.where}: {e.lhs} is defined twice (first at {defined[e.lhs].where})"
                )
            if e.lhs in params_used:
                raise ModelSpecError(
                    f"{where} [structure], {e.where}: {e.lhs} is defined after "
                    f"{params_used[e.lhs][0]} uses it as a parameter; define it first"
                )
            defined[e.lhs] = e
    routes = _split_routes(ctx, table.get("split"), states, sidx, dose_states, defined, declared, params_used)
    missing = [s for s in states if s not in odes]
    if missing:
        raise ctx.fail(
            f'state {missing[0]} has no equation: add "d/dt({missing[0]}) = ..." to `equations` '
            '("d/dt(X) = 0" for a state that does not change)',
            None,
            "equations",
        )
    if not any(e.kind in ("out", "ref") for e in eqs):
        raise ctx.fail('`outputs` is empty: define at least one output such as "CP = CENTRAL/V"', None, "outputs")
    dose_names = {f"{pre}{i + 1}" for i in range(n) for pre in ("F", "ALAG", "R", "D")}
    for nm, (w, t_) in params_used.items():
        if nm in dose_names and (m_dose := _DOSE_PARAM.match(nm)):
            raise ModelSpecError(
                f"{where} [structure], {w}: equation {t_!r}: {nm} is a dosing parameter "
                f"(F/ALAG/R/D of CMT {m_dose.group(2)}); the engine applies it to "
                "doses, the equations cannot use it"
            )
    if declared is not None:
        unused = [p for p in declared if p not in params_used]
        if unused:
            raise ctx.fail(
                f"parameter {unused[0]} is declared but never used in `equations` or `outputs`; remove it or use it",
                f"{unused[0]} =",
            )
    for o in (e for e in eqs if e.kind in ("out", "ref")):
        if _uses_time(defined[o.lhs] if o.kind == "ref" else o, defined):
            raise ModelSpecError(
                f"{where} [structure], {o.where}: output {o.text!r} depends on time t; outputs "
                "are functions of states and parameters"
            )

    # ---- units: the first mismatch the declared units prove (pkpd.models.units) ----------------------------
    checked = [e for e in eqs if e.kind != "ref"]
    bad_unit = check_equations(
        [(e.kind, e.lhs, parse_tree(e.rhs)) for e in checked],
        dict(zip(states, units)),
        {p: u for p, (u, _, _) in (declared or {}).items()},
        TIME_SYMBOL,
    )
    if bad_unit is not None:
        e = checked[bad_unit[0]]
        raise ModelSpecError(f"{where} [structure], {e.where}: equation {e.text!r}: unit mismatch: {bad_unit[1]}")

    # ---- trees with defined quantities substituted ----------------------------------------------------
    trees: dict[str, ast.expr] = {}
    for e in (e for e in eqs if e.kind != "ref"):
        tree = _Subst(trees).visit(parse_tree(e.rhs))
        if e.kind in ("def", "out"):
            trees[e.lhs] = tree
        else:
            trees["d/dt(" + e.lhs + ")"] = tree
    rhs_trees = [trees[f"d/dt({s})"] for s in states]
    pnames = [q for q in declared if q in params_used] if declared is not None else list(params_used)
    dec = declared or {}
    params = tuple(Param(p, *dec.get(p, ("", "", -np.inf))) for p in pnames)
    rhs_fns = [compile_tree(t) for t in rhs_trees]
    out_fns = {e.lhs: compile_tree(trees[e.lhs]) for e in eqs if e.kind in ("out", "ref")}

    # ---- linearity ----------------------------------------------------------------------------------
    reason, terms, blocks = _linear_terms(states, rhs_trees, pnames, rhs_fns)
    if reason:
        nonlinear = _make_rhs(states, rhs_fns)
        terms, blocks = (), (tuple(range(n)),)
    else:
        nonlinear = None
    model = UserModel(
        name=mname,
        compartments=tuple(states),
        params=params,
        central=central,
        volume="",
        linear_terms=tuple(terms),
        blocks=tuple(blocks),
        description=str(table.get("description", "")),
        nonlinear=nonlinear,
        routes=routes,
        state_units=tuple(units),
        dose_states=dose_states,
        output_fns=out_fns,
        output_units={},
        equations=tuple(e.text for e in eqs),
        symbol_lines=params_used,
        linear_reason=reason,
        source=source,
        rhs_fn=_make_rhs(states, rhs_fns),
    )
    _CACHE[key] = model
    return _check_known(model, known, ctx)


def _split_routes(
    ctx: _Ctx,
    raw: Any,
    states: list[str],
    sidx: Mapping[str, int],
    dose_states: tuple[int, ...],
    defined: Mapping[str, _Eq],
    declared: Mapping[str, Any] | None,
    params_used: dict[str, tuple[str, str]],
) -> dict[int, tuple[Route, ...]]:
    """The ``[structure.split]`` table as engine routes: ``{state index: (Route, ...)}``.

    Each key is a dosed state; its value lists the parts a bolus dose record into that state is split into,
    ``"FRACTION -> STATE"`` (a bolus into STATE) or ``"FRACTION -> STATE over DURATION"`` (a zero-order input
    into STATE lasting DURATION h). FRACTION is ``1``, a parameter ``NAME`` or its complement ``1 - NAME``;
    DURATION is a parameter. Fraction and duration parameters are added to ``params_used`` (in order).
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ctx.fail('`split` must be a table STATE = ["FR -> STATE1", "1 - FR -> STATE2"]', "split")
    routes: dict[int, tuple[Route, ...]] = {}
    for src, parts in raw.items():
        item = f"split.{src}"
        if str(src) not in sidx:
            raise ctx.fail(f"split names {src}, which is not a state (states: {', '.join(states)})", f"{src} =", item)
        if sidx[str(src)] not in dose_states:
            raise ctx.fail(
                f"split names {src}, which does not receive doses (doses: {', '.join(states[i] for i in dose_states)})",
                f"{src} =",
                item,
            )
        if isinstance(parts, str):
            parts = [parts]
        if not isinstance(parts, list) or not parts:
            raise ctx.fail(
                f'split.{src} must be a non-empty list such as ["FR -> {src}", "1 - FR -> OTHER"]', f"{src} =", item
            )
        out = []
        for j, part in enumerate(parts):
            pitem = f"{item}[{j}]"
            m = _SPLIT.match(part) if isinstance(part, str) else None
            loc = ctx.loc(part, pitem) if isinstance(part, str) else pitem
            if not m:
                raise ModelSpecError(
                    f"{ctx.where} [structure], {loc}: syntax error in split part {part!r}: expected "
                    "'FRACTION -> STATE' or 'FRACTION -> STATE over DURATION' with FRACTION 1, "
                    "NAME or 1 - NAME (parameters)"
                )
            whole, compl, frac, target, dur = m.groups()
            if target not in sidx:
                raise ModelSpecError(
                    f"{ctx.where} [structure], {loc}: split part {part!r}: {target} is not a state "
                    f"(states: {', '.join(states)})"
                )
            for nm in (frac, dur):
                if nm is None:
                    continue
                if nm in sidx or nm in defined or nm == TIME_SYMBOL:
                    raise ModelSpecError(
                        f"{ctx.where} [structure], {loc}: split part {part!r}: {nm} must be a "
                        "parameter (not a state, a defined quantity or t)"
                    )
                if (m_dose := _DOSE_PARAM.match(nm)) and int(m_dose.group(2)) <= len(states):
                    raise ModelSpecError(
                        f"{ctx.where} [structure], {loc}: split part {part!r}: {nm} is a dosing "
                        "parameter; name a structural parameter"
                    )
                if declared is not None and nm not in declared:
                    raise ModelSpecError(
                        f"{ctx.where} [structure], {loc}: split part {part!r}: unknown symbol {nm} "
                        "(not a parameter of [structure.parameters])"
                    )
                params_used.setdefault(nm, (loc, part.strip()))
            out.append(
                Route(
                    target=sidx[target],
                    fraction=None if whole else frac,
                    complement=bool(compl),
                    mode="zero_order" if dur else "bolus",
                    duration=dur,
                )
            )
        routes[sidx[str(src)]] = tuple(out)
    return routes


def _check_known(model: UserModel, known: set[str] | None, ctx: _Ctx) -> UserModel:
    """Every parameter symbol of the equations must be defined by the surrounding file (when it defines any)."""
    if known is None:
        return model
    for nm, (item, text) in model.symbol_lines.items():
        if nm not in known:
            raise ModelSpecError(
                f"{ctx.where} [structure], {ctx.loc(text, item)}: equation {text!r}: unknown symbol "
                f"{nm} (not a state ({', '.join(model.compartments)}), a defined quantity or a "
                "parameter of the file)"
            )
    return model


def _uses_time(e: _Eq, defined: Mapping[str, _Eq], seen: set[str] | None = None) -> bool:
    seen = seen or set()
    if TIME_SYMBOL in e.names:
        return True
    return any(_uses_time(defined[n], defined, seen | {n}) for n in e.names if n in defined and n not in seen)


class _Subst(ast.NodeTransformer):
    def __init__(self, trees: Mapping[str, ast.expr]):
        self.trees = trees

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in self.trees:
            return copy.deepcopy(self.trees[node.id])
        return node


def _make_rhs(states: list[str], rhs_fns: list[_Fn]) -> Callable[..., Array]:
    def g(t: Any, x: Array, p: Mapping[str, Any], forcing: Any = None) -> Array:
        import jax.numpy as jnp

        env = dict(p)
        for i, s in enumerate(states):
            env[s] = x[..., i]
        env[TIME_SYMBOL] = t
        vals = [jnp.broadcast_to(jnp.asarray(fn(env, jnp), dtype=x.dtype), x.shape[:-1]) for fn in rhs_fns]
        return jnp.stack(vals, axis=-1)

    return g


# ---------------------------------------------------------------------------------------------------
# symbolic linearity


_Lin = dict[str, _Fn]  # state name (or "" for the state-free part) -> fn(env, xp)


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _neg(f: _Fn) -> _Fn:
    return lambda env, xp: xp.negative(f(env, xp))


def _add(f: _Fn, g: _Fn) -> _Fn:
    return lambda env, xp: xp.add(f(env, xp), g(env, xp))


def _sub(f: _Fn, g: _Fn) -> _Fn:
    return lambda env, xp: xp.subtract(f(env, xp), g(env, xp))


def _mul(f: _Fn, g: _Fn) -> _Fn:
    return lambda env, xp: xp.multiply(f(env, xp), g(env, xp))


def _div(f: _Fn, g: _Fn) -> _Fn:
    return lambda env, xp: xp.divide(f(env, xp), g(env, xp))


def _recip(f: _Fn) -> _Fn:
    return lambda env, xp: xp.divide(1.0, f(env, xp))


def _decompose(node: ast.expr, states: set[str]) -> _Lin | None:
    """``{state: coefficient, "": state-free part}`` of a tree linear in the states, or ``None``."""
    names = _names(node)
    if TIME_SYMBOL in names:
        return None
    if not names & states:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and float(node.value) == 0.0:
            return {}
        return {"": compile_tree(node)}
    if isinstance(node, ast.Name):
        return {node.id: lambda env, xp: 1.0}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        d = _decompose(node.operand, states)
        if d is None or isinstance(node.op, ast.UAdd):
            return d
        return {k: _neg(f) for k, f in d.items()}
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, (ast.Add, ast.Sub)):
            a, b = _decompose(node.left, states), _decompose(node.right, states)
            if a is None or b is None:
                return None
            out = dict(a)
            sub = isinstance(node.op, ast.Sub)
            for k, g in b.items():
                if k in out:
                    f = out[k]
                    out[k] = _sub(f, g) if sub else _add(f, g)
                else:
                    out[k] = _neg(g) if sub else g
            return out
        if isinstance(node.op, ast.Mult):
            ls, rs = _names(node.left) & states, _names(node.right) & states
            if ls and rs:
                return None
            lin, const = (node.left, node.right) if ls else (node.right, node.left)
            d = _decompose(lin, states)
            if d is None:
                return None
            c = compile_tree(const)
            if isinstance(lin, ast.Name):  # KA*DEPOT: the coefficient is the other factor itself
                return {lin.id: c}
            if lin is node.left:
                return {k: _mul(f, c) for k, f in d.items()}
            return {k: _mul(c, f) for k, f in d.items()}
        if isinstance(node.op, ast.Div):
            if _names(node.right) & states:
                return None
            d = _decompose(node.left, states)
            if d is None:
                return None
            c = compile_tree(node.right)
            if isinstance(node.left, ast.Name):  # STATE / V: coefficient 1/V
                return {k: _recip(c) for k in d}
            return {k: _div(f, c) for k, f in d.items()}
    return None


def strongly_connected(succ: Mapping[Any, Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Strongly connected components of the directed graph ``succ`` (node -> its successors; Tarjan 1972),
    each sorted, listed so that every edge goes backward or within a component (reverse topological order).

    >>> strongly_connected({"a": ["b"], "b": ["a"], "c": ["a"]})
    [('a', 'b'), ('c',)]
    """
    index: dict[Any, int] = {}
    low: dict[Any, int] = {}
    on: set[Any] = set()
    stack: list[Any] = []
    out: list[tuple[Any, ...]] = []

    def visit(v: Any) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(tuple(sorted(comp)))

    for v in succ:
        if v not in index:
            visit(v)
    return out


def _scc_blocks(n: int, edges: set[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Strongly connected components in an order where every edge c -> r goes forward or within a block."""
    succ = {i: sorted(r for (r, c) in edges if c == i and r != i) for i in range(n)}
    return strongly_connected(succ)[::-1]


_Term = tuple[int, int, Callable[[Mapping[str, Any]], Any]]  # K[row, col] += fn(p)


def _with_xp_of_values(fn: _Fn) -> Callable[[Mapping[str, Any]], Any]:
    """``fn(p, xp)`` as a rate-matrix term ``p -> value``, evaluated with the array module of ``p``'s values."""
    return lambda p: fn(p, _xp_of(p.values()))


def _linear_terms(
    states: list[str], rhs_trees: list[ast.expr], pnames: list[str], rhs_fns: list[_Fn]
) -> tuple[str, Sequence[_Term], Sequence[tuple[int, ...]]]:
    """``(reason, terms, blocks)``: ``reason`` is empty when the exact solver applies."""
    sset = set(states)
    sidx = {s: i for i, s in enumerate(states)}
    terms: list[_Term] = []
    for i, (s, tree) in enumerate(zip(states, rhs_trees)):
        if TIME_SYMBOL in _names(tree):
            return f"d/dt({s}) depends on time t", (), ()
        d = _decompose(tree, sset)
        if d is None:
            return f"d/dt({s}) is not linear in the states", (), ()
        if "" in d:
            return f"d/dt({s}) has a term without a state (a zero-order input)", (), ()
        for st, fn in d.items():
            terms.append((i, sidx[st], _with_xp_of_values(fn)))
    n = len(states)
    blocks = _scc_blocks(n, {(r, c) for r, c, _ in terms})
    big = [b for b in blocks if len(b) > 3]
    if big:
        return (
            (
                f"states {', '.join(states[i] for i in big[0])} form a coupled block of more than 3 states (the "
                "exact solver's closed-form eigenvalues cover blocks of up to 3)"
            ),
            (),
            (),
        )
    # numerical checks at random points: real spectrum of each block, f(x) == K x
    rng = np.random.default_rng(20260)
    for _ in range(8):
        p = {q: float(np.exp(rng.uniform(np.log(0.2), np.log(5.0)))) for q in pnames}
        K = np.zeros((n, n))
        for r, c, term in terms:
            K[r, c] += float(term(p))
        if not np.all(np.isfinite(K)):
            continue
        for b in blocks:
            if len(b) > 1:
                ev = np.linalg.eigvals(K[np.ix_(b, b)])
                if np.any(np.abs(ev.imag) > 1e-9 * np.maximum(np.abs(ev.real), 1.0)):
                    return (
                        (
                            f"states {', '.join(states[i] for i in b)} have a rate matrix with complex eigenvalues "
                            "(oscillating exchange)"
                        ),
                        (),
                        (),
                    )
        x = rng.uniform(0.1, 10.0, n)
        env = {**p, **{s: x[i] for i, s in enumerate(states)}, TIME_SYMBOL: 1.0}
        f = np.array([float(fn(env, np)) for fn in rhs_fns])
        if np.all(np.isfinite(f)) and not np.allclose(f, K @ x, rtol=1e-9, atol=1e-12 * np.abs(K @ x).max()):
            return "the right-hand side does not match its symbolic rate matrix", (), ()
    return "", terms, blocks


# ---------------------------------------------------------------------------------------------------
# files


def structure_from_file(path: str | Path) -> tuple[Mapping[str, Any], str]:
    """``([structure] table, file text)`` of a TOML file, or :class:`ModelSpecError` naming the problem."""
    from .._toml import read_toml

    path = Path(path)
    content, text = read_toml(path)
    if "structure" not in content or not isinstance(content["structure"], Mapping):
        raise ModelSpecError(f"model file {path} has no [structure] section (see docs/model_language.md)")
    return content["structure"], text


def known_parameters(content: Mapping[str, Any]) -> set[str] | None:
    """Parameter names a file defines besides ``[structure]`` (fit: ``[parameters.*]`` and ``[derived]``;
    simulate: ``[parameters]``), or ``None`` when it defines none."""
    names: set[str] = set()
    for key in ("parameters", "derived"):
        v = content.get(key)
        if isinstance(v, Mapping):
            names |= {str(k) for k in v}
    return names or None


def load_user_model(path: str | Path) -> UserModel:
    """Compile the ``[structure]`` section of a TOML file (cached per content) and register the model.

    Parameters
    ----------
    path
        A ``.toml`` file with a ``[structure]`` section; it may also hold the fitting model or the
        parameters, whose names are then checked against the equations' symbols.

    Returns
    -------
    UserModel
        Registered under its name, so :func:`pkpd.models.get_model` (and a fit model's ``structure``)
        finds it by name afterwards.

    Raises
    ------
    ModelSpecError
        On a missing file, invalid TOML, or a malformed ``[structure]`` (line and symbol named).
    """
    path = Path(path)
    table, text = structure_from_file(path)
    content = tomllib.loads(text)
    model = compile_structure(
        table, name=path.stem, where=f"model file {path}", text=text, source=str(path), known=known_parameters(content)
    )
    register_user_model(model)
    return model


def register_user_model(model: UserModel) -> UserModel:
    """Register ``model`` by name; a user model of the same name is replaced, other models are not."""
    old = REGISTRY.get(model.name)
    if old is not None and old is not model and not isinstance(old, UserModel):
        raise ModelSpecError(
            f"model name {model.name!r} is taken by a library model; choose another `name` in [structure]"
        )
    REGISTRY[model.name] = model
    return model
