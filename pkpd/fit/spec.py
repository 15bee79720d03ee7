"""Population model specification: what users write (TOML or Python) to fit a model to data.

A population model names a structural model from the library (:func:`pkpd.models.get_model`), its
parameters with typical values, bounds and covariate relations, the inter-individual variability (IIV,
diagonal or block omega), optional inter-occasion variability (IOV), derived structural parameters
written as expressions, and one residual-error model per observation type (DVID). A complete TOML file::

    [model]
    structure = "1cmt_oral"
    description = "Theophylline, one compartment, first-order absorption"
    # optional: which drug-library parameters of the regimen simulator the fitted ones are, so that a
    # patient's forecast posterior can drive `pkpd optimize --posterior` (same units required)
    # simulates = { CL = "gabapentin.CL", V = "gabapentin.V" }
    # time_unit = "h"            # optional label of the dataset's TIME unit in plots ("min", "d"...); the
    #                              data are not rescaled: rate constants and clearances are per this unit

    [parameters.KE]              # an estimated parameter: typical value = initial estimate
    estimate = 0.08
    unit = "1/h"

    [parameters.KA]
    estimate = 1.5
    unit = "1/h"
    iiv = 0.4                    # omega^2 (variance of eta), log-normal IIV by default

    [parameters.CL]
    estimate = 0.04
    unit = "L/h/kg"
    iiv = 0.03
    covariates = [
      { covariate = "WT", relation = "power", reference = 70, estimate = 0.75 },
      { covariate = "CYP2D6_AS", relation = "activity_score", reference = 2, estimate = 0.5 },
    ]

    [derived]                    # structural parameters as expressions of parameters and covariates
    V = "CL / KE"

    [[omega.block]]              # optional correlated block (replaces the diagonal iiv entries)
    parameters = ["KA", "CL"]
    values = [0.4, 0.01, 0.03]   # lower triangle, row-wise: var KA, cov(KA, CL), var CL

    [iov]                        # optional inter-occasion variances; the dataset needs an OCC column
    CL = 0.02

    [covariates]                 # optional: units of dataset columns, for the plots' axes (labels only)
    WT = "kg"
    CYP2D6_AS = "activity score"

    [observations.conc]
    dvid = 1
    output = "CP"                # a model output, compartment amount or expression of them
    error = "combined"           # additive | proportional | combined | lognormal
    additive = 0.1               # SD, DV units
    proportional = 0.1           # CV as a fraction
    lloq = 0.05                  # optional: BLQ records use the M3 likelihood

Covariate relations (``factor`` multiplies the typical value; ``theta`` is the estimated coefficient):

============== ======================================= ==============================================
relation       factor                                   use
============== ======================================= ==============================================
power          ``(cov / reference) ** theta``           allometric weight, age
linear         ``1 + theta * (cov - reference)``        creatinine clearance, albumin
exponential    ``exp(theta * (cov - reference))``       age on a log scale
proportional   ``cov / reference`` (nothing estimated)  dose per kg
categorical    ``theta_level`` (reference level: 1)     sex, formulation, phenotype class
indicator      ``theta ** condition``                   ``condition = "CYP2D6_AS < 1"``
activity_score ``(1 - theta) + theta * cov / reference`` CYP activity score; ``theta`` = fraction of
                                                        clearance by the enzyme at the reference score
============== ======================================= ==============================================

References
----------
Beal SL, Sheiner LB, Boeckmann AJ, Bauer RJ. NONMEM 7.5 Users Guides (1989-2020), Icon plc.
Mould DR, Upton RN. Basic concepts in population modeling, simulation, and model-based drug
development, part 2. CPT Pharmacometrics Syst Pharmacol 2013;2:e38 (covariate relations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ModelSpecError
from ..expr import Expression, compile_expression, compile_parameter_block
from .error_models import ERROR_MODELS, TERMS, ErrorModel
from .random_effects import IIV_TYPES, RandomEffect
from .relations import RELATIONS, Relation

__all__ = [
    "CovariateEffect",
    "Parameter",
    "Observation",
    "PopulationModel",
    "load_model",
    "RELATIONS",
    "ERROR_MODELS",
    "IIV_TYPES",
]


def _fail(where: str, message: str) -> ModelSpecError:
    return ModelSpecError(f"{where}: {message}")


@dataclass(frozen=True)
class CovariateEffect:
    """One covariate relation on a parameter's typical value (see the module table).

    Attributes
    ----------
    covariate
        Dataset column (e.g. ``"WT"``, kg; ``"CYP2D6_AS"``, activity score).
    relation
        One of :data:`RELATIONS`.
    reference
        Reference value of the covariate (power, linear, exponential, proportional, activity_score).
    estimate
        Initial estimate of the coefficient (power exponent, slope, factor, fraction); for
        ``categorical``, a mapping ``level -> factor`` for the non-reference levels.
    fixed
        Keep the coefficient(s) at ``estimate``.
    levels
        ``categorical`` only: the covariate values allowed, the first being the reference level.
    condition
        ``indicator`` only: an expression of dataset columns, true where the factor applies.
    """

    covariate: str
    relation: str
    reference: float | None = None
    estimate: Any = None
    fixed: bool = False
    levels: tuple[float, ...] = ()
    condition: str | None = None

    @property
    def relation_model(self) -> Relation:
        """The relation named by :attr:`relation` (:data:`pkpd.fit.relations.RELATIONS`)."""
        return RELATIONS[self.relation]

    def coefficient_names(self, parameter: str) -> list[str]:
        """Names of the estimated coefficients, as shown in parameter tables."""
        return self.relation_model.coefficient_names(self, parameter)

    def initial(self) -> list[float]:
        return self.relation_model.initial(self)

    def bounds(self) -> tuple[float, float] | None:
        return self.relation_model.bounds

    def columns(self) -> set[str]:
        return self.relation_model.columns(self)


@dataclass(frozen=True)
class Parameter:
    """An estimated (or fixed) model parameter with its typical value, covariates and IIV.

    Attributes
    ----------
    name
        Name used by the structural model (``CL``, ``V``, ``KA``...) or by derived expressions and
        observation outputs (``E0``, ``EC50``...).
    estimate
        Initial estimate of the typical value (units of ``unit``).
    unit
        Unit text, reported in tables.
    lower, upper
        Bounds of the typical value; the estimate is made on ``log(x - lower)`` when only ``lower`` is
        finite, on the logit scale when both are, unconstrained otherwise. Default ``(0, inf)``.
    fixed
        Keep the typical value at ``estimate``.
    iiv
        Initial variance of the random effect (omega^2); ``None`` for no IIV.
    iiv_type
        How the random effect enters: ``lognormal`` (``P = TV exp(eta)``, default), ``additive``
        (``TV + eta``), ``proportional`` (``TV (1 + eta)``) or ``logit`` (``logit P = logit TV + eta``,
        for fractions in (0, 1)).
    iiv_fixed
        Keep omega^2 at ``iiv``.
    covariates
        Covariate relations on the typical value, applied multiplicatively.
    """

    name: str
    estimate: float
    unit: str = ""
    lower: float = 0.0
    upper: float = math.inf
    fixed: bool = False
    iiv: float | None = None
    iiv_type: str = "lognormal"
    iiv_fixed: bool = False
    covariates: tuple[CovariateEffect, ...] = ()
    description: str = ""

    @property
    def iiv_model(self) -> RandomEffect:
        """How the random effect enters (:data:`pkpd.fit.random_effects.IIV_TYPES` of :attr:`iiv_type`)."""
        return IIV_TYPES[self.iiv_type]


@dataclass(frozen=True)
class Observation:
    """One observation type (DVID) and its residual-error model.

    Attributes
    ----------
    name
        Label (``conc``, ``nrs``...).
    dvid
        Value of the dataset's DVID column for these records (optional when there is one type).
    output
        What is observed: a model output (``CP``, ``CE``, ``CM``), a compartment name, or an expression
        of outputs, compartment amounts, parameters and covariates, e.g.
        ``"E0 * (1 - EMAX * CE**GAM / (EC50**GAM + CE**GAM))"``.
    error
        ``additive`` (SD ``a``), ``proportional`` (SD ``b |f|``), ``combined`` (SD ``sqrt(a^2 + b^2 f^2)``)
        or ``lognormal`` (``log DV ~ N(log f, sigma^2)``; the likelihood is that of ``log DV``, as with
        NONMEM's log-transform-both-sides, without the Jacobian term).
    additive, proportional, sigma
        Initial values: additive SD (DV units), proportional CV (fraction), log-scale SD.
    fixed
        Names among ``additive``, ``proportional``, ``sigma`` kept at their initial values.
    lloq
        Lower limit of quantification for these records (DV units) when the dataset has no LLOQ
        column; records flagged BLQ (or below LLOQ when there is no BLQ column) use the M3 likelihood
        ``P(DV < LLOQ)``.
    unit
        DV unit, reported.
    """

    name: str
    output: str = "CP"
    dvid: int | None = None
    error: str = "additive"
    additive: float | None = None
    proportional: float | None = None
    sigma: float | None = None
    fixed: tuple[str, ...] = ()
    lloq: float | None = None
    unit: str = ""

    @property
    def error_model(self) -> ErrorModel:
        """The error model named by :attr:`error` (:data:`pkpd.fit.error_models.ERROR_MODELS`)."""
        return ERROR_MODELS[self.error]

    def error_terms(self) -> list[str]:
        return list(self.error_model.term_names)

    def initial(self, term: str) -> float:
        v = getattr(self, term)
        return float(v) if v is not None else TERMS[term].default


@dataclass(frozen=True)
class PopulationModel:
    """A complete population model (see the module docstring for the TOML form).

    Attributes
    ----------
    structure
        Structural model name (:func:`pkpd.models.list_models`).
    parameters
        Estimated parameters, in table order.
    derived
        Structural parameters defined as expressions of parameters and covariates (e.g. ``V = "CL/KE"``).
    omega_blocks
        Correlated IIV blocks: ``(names, lower-triangle values, fixed)``; parameters with ``iiv`` not in
        a block form 1x1 blocks.
    iov
        Inter-occasion variances by parameter name (the dataset needs an ``OCC`` column).
    observations
        Observation types with their error models.
    interpolation
        ``nocb`` (NONMEM) or ``locf`` for time-varying covariates.
    simulates
        Fitted parameter -> regimen-simulator quantity it is (``"<drug>.<PARAM>"`` of the drug library, or
        ``"pain.b0"`` / ``"pain.t_half"`` / ``"pain.sensitivity"``): how a forecast posterior becomes
        scenario draws of the optimizer (:mod:`regimens.posterior`).
    structure_table
        The ``[structure]`` section when the structural model is written in the file
        (:mod:`pkpd.models.user`); ``structure`` is then its name. Written back by :meth:`to_dict`.
    time_unit
        Unit of the dataset's TIME column (``"h"`` by default; ``"min"``, ``"s"``, ``"d"``, ``"week"`` or any
        short label): only a label, used in the plots' axes (``TIME (min)``) and kept in the written
        model file. The data are never rescaled, so rate constants and clearances are per this unit.
    covariate_units
        Unit of dataset columns (``{"WT": "kg", "CRCL": "mL/min"}``, the ``[covariates]`` table): only
        labels, used on the axes of the random effects vs covariates plot (``eta_covariates.png``) and kept
        in the written model file. A column without one is labelled "unit not given".
    """

    structure: str
    parameters: tuple[Parameter, ...]
    observations: tuple[Observation, ...]
    derived: Mapping[str, str] = field(default_factory=dict)
    omega_blocks: tuple[tuple[tuple[str, ...], tuple[float, ...], bool], ...] = ()
    iov: Mapping[str, float] = field(default_factory=dict)
    interpolation: str = "nocb"
    description: str = ""
    source: str | None = None
    simulates: Mapping[str, str] = field(default_factory=dict)
    time_unit: str = "h"
    structure_table: Mapping[str, Any] | None = None
    covariate_units: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived structure -------------------------------------------------------------------------
    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def iiv_blocks(self) -> list[tuple[tuple[str, ...], np.ndarray, bool]]:
        """IIV blocks in eta order: ``(names, full covariance, fixed)``."""
        in_block = {n for names, _, _ in self.omega_blocks for n in names}
        out = []
        for names, values, fixed in self.omega_blocks:
            out.append((tuple(names), _tril_to_full(values, len(names)), fixed))
        for p in self.parameters:
            if p.iiv is not None and p.name not in in_block:
                out.append(((p.name,), np.array([[float(p.iiv)]]), p.iiv_fixed))
        return out

    def eta_names(self) -> tuple[str, ...]:
        return tuple(n for names, _, _ in self.iiv_blocks() for n in names)

    def derived_block(self) -> dict[str, Expression]:
        return compile_parameter_block(dict(self.derived)) if self.derived else {}

    def output_expressions(self) -> dict[str, Expression]:
        return {o.name: compile_expression(o.output, name=o.name) for o in self.observations}

    def covariate_columns(self) -> set[str]:
        """Dataset columns the model needs (covariate relations, derived and output expressions)."""
        from ..models import get_model

        model = get_model(self.structure)
        known = (
            set(self.parameter_names)
            | set(self.derived)
            | set(model.compartments)
            | set(model.output_names())
            | set(model.param_names)
            | {"TIME"}
        )
        cols: set[str] = set()
        for p in self.parameters:
            for c in p.covariates:
                cols |= c.columns()
        for e in self.derived_block().values():
            cols |= set(e.names) - known
        for e in self.output_expressions().values():
            cols |= set(e.names) - known
        return cols

    # ---- checks -------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ModelSpecError` on any inconsistency, with the fix."""
        from ..models import get_model

        where = f"model file {self.source}" if self.source else "population model"
        try:
            model = get_model(self.structure)
        except ModelSpecError as exc:
            raise _fail(where, str(exc)) from None
        tu = self.time_unit
        if not isinstance(tu, str) or not tu.strip() or len(tu) > 16 or any(c in tu for c in "\n\r()"):
            raise _fail(
                f"{where} [model]",
                f'`time_unit` must be a short label of the TIME unit such as "h", '
                f'"min" or "d" (at most 16 characters, no parentheses), not {tu!r}',
            )
        for col, unit in self.covariate_units.items():
            if not isinstance(unit, str) or len(unit) > 32 or any(c in unit for c in "\n\r"):
                raise _fail(
                    f"{where} [covariates]",
                    f'`{col}` must be a short unit label such as "kg" or '
                    f'"mL/min" (text, at most 32 characters), not {unit!r}',
                )
        names = self.parameter_names
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise _fail(where, f"parameter(s) {', '.join(dup)} defined twice")
        if not self.parameters:
            raise _fail(where, "no [parameters.NAME] section: at least one parameter must be estimated")
        for p in self.parameters:
            w = f"{where}, parameter {p.name}"
            if not p.name.isidentifier():
                raise _fail(w, "the name must be an identifier (letters, digits, underscore)")
            if not np.isfinite(p.estimate):
                raise _fail(w, f"estimate must be a finite number, got {p.estimate!r}")
            if not (p.lower < p.upper):
                raise _fail(w, f"lower bound {p.lower:g} must be below the upper bound {p.upper:g}")
            if not (p.lower < p.estimate < p.upper):
                raise _fail(
                    w,
                    f"initial estimate {p.estimate:g} must lie strictly inside the bounds "
                    f"({p.lower:g}, {p.upper:g}); set `lower`/`upper` (e.g. lower = -inf for a "
                    "parameter that can be negative)",
                )
            if p.iiv_type not in IIV_TYPES:
                raise _fail(w, f"iiv_type {p.iiv_type!r} is not one of {', '.join(IIV_TYPES)}")
            if p.iiv is not None and not (np.isfinite(p.iiv) and p.iiv > 0):
                raise _fail(w, f"iiv (omega^2, a variance) must be > 0, got {p.iiv!r}")
            wrong_type = p.iiv_model.check(p)
            if wrong_type:
                raise _fail(w, wrong_type)
            for c in p.covariates:
                cw = f"{w}, covariate {c.covariate}"
                if c.relation not in RELATIONS:
                    raise _fail(cw, f"relation {c.relation!r} is not one of {', '.join(RELATIONS)}")
                missing_entry = c.relation_model.check(c)
                if missing_entry:
                    raise _fail(cw, missing_entry)
                lo, hi = c.bounds() or (-math.inf, math.inf)
                for v in c.initial():
                    if not (lo < v < hi):
                        raise _fail(cw, f"initial coefficient {v:g} must lie in ({lo:g}, {hi:g})")
        # structural parameters covered
        derived = set(self.derived)
        clash = derived & set(names)
        if clash:
            raise _fail(where, f"{', '.join(sorted(clash))} is both an estimated parameter and [derived]")
        missing = [q for q in model.param_names if q not in names and q not in derived]
        if missing:
            raise _fail(
                where,
                f"structure {model.name} needs {', '.join(missing)} "
                f"({', '.join(f'{q.name} [{q.unit}]' for q in model.params if q.name in missing)}); "
                "define each as [parameters.NAME] or in [derived]",
            )
        try:
            dblock = self.derived_block()
        except ModelSpecError as exc:
            raise _fail(where, f"[derived]: {exc}") from None
        dose_ok = set(model.dose_params())
        extra_route = {x for rs in model.routes.values() for rt in rs for x in (rt.fraction, rt.duration) if x}
        for d in derived:
            if d in model.param_names or d in dose_ok or d in extra_route:
                continue
            used = any(d in e.names for e in self.output_expressions().values()) or any(
                d in e.names for e in dblock.values()
            )
            if not used:
                raise _fail(
                    where,
                    f"[derived] {d} is not a parameter of structure {model.name} "
                    f"({', '.join(model.param_names)}; dosing: F<n>, ALAG<n>, D<n>, R<n>) and no "
                    "output uses it",
                )
        # omega blocks
        seen: set[str] = set()
        for names_b, values, _fixed in self.omega_blocks:
            for n in names_b:
                if n not in names:
                    raise _fail(
                        where, f"omega block names {n}, which is not a [parameters.*] entry (known: {', '.join(names)})"
                    )
                if n in seen:
                    raise _fail(where, f"parameter {n} appears in two omega blocks")
                seen.add(n)
            k = len(names_b)
            if len(values) != k * (k + 1) // 2:
                raise _fail(
                    where,
                    f"omega block {list(names_b)} needs {k * (k + 1) // 2} values (lower "
                    f"triangle, row-wise), got {len(values)}",
                )
            full = _tril_to_full(values, k)
            if not np.all(np.isfinite(full)) or np.min(np.linalg.eigvalsh(full)) <= 0:
                ev = np.linalg.eigvalsh(full) if np.all(np.isfinite(full)) else [math.nan]
                raise _fail(
                    where,
                    f"omega block {list(names_b)} = {np.round(full, 6).tolist()} is not "
                    f"positive definite (smallest eigenvalue {min(ev):.3g}); reduce the covariances "
                    "so that |cov| < sqrt(var_i var_j)",
                )
        for p in self.parameters:
            if p.name in seen and p.iiv is not None:
                pass  # the block value wins; iiv is ignored for block members
        for n, v in self.iov.items():
            if n not in names:
                raise _fail(where, f"[iov] names {n}, which is not a [parameters.*] entry")
            if not (np.isfinite(v) and v > 0):
                raise _fail(where, f"[iov] {n} must be a variance > 0, got {v!r}")
        # observations
        if not self.observations:
            raise _fail(where, 'no [observations.NAME] section: say what DV is (e.g. output = "CP")')
        dvids = [o.dvid for o in self.observations]
        if len(self.observations) > 1 and any(d is None for d in dvids):
            raise _fail(where, "with several observation types each needs a `dvid` (the DVID column value)")
        if len(set(dvids)) != len(dvids):
            raise _fail(where, f"two observation types share dvid {[d for d in dvids if dvids.count(d) > 1][0]}")
        known = set(names) | derived | set(model.param_names) | set(model.compartments) | set(model.output_names())
        for o in self.observations:
            w = f"{where}, observation {o.name}"
            if o.error not in ERROR_MODELS:
                raise _fail(w, f"error {o.error!r} is not one of {', '.join(ERROR_MODELS)}")
            for t in o.error_terms():
                v = o.initial(t)
                if not (np.isfinite(v) and v > 0):
                    raise _fail(w, f"{t} must be > 0, got {v!r}")
            for f in o.fixed:
                if f not in o.error_terms():
                    raise _fail(
                        w,
                        f"fixed names {f!r}, which is not a term of the {o.error} error model "
                        f"({', '.join(o.error_terms())})",
                    )
            if o.lloq is not None and not (np.isfinite(o.lloq) and o.lloq > 0):
                raise _fail(w, f"lloq must be > 0, got {o.lloq!r}")
            try:
                compile_expression(o.output, name=o.name)
            except ModelSpecError as exc:
                raise _fail(w, f"output: {exc}") from None
        if self.interpolation not in ("nocb", "locf"):
            raise _fail(where, f"interpolation must be 'nocb' or 'locf', got {self.interpolation!r}")
        del known

    # ---- serialization --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A mapping that :func:`load_model` reads back (the TOML layout)."""
        params: dict[str, Any] = {}
        for p in self.parameters:
            d: dict[str, Any] = {"estimate": p.estimate}
            if p.unit:
                d["unit"] = p.unit
            if p.lower != 0.0:
                d["lower"] = p.lower
            if p.upper != math.inf:
                d["upper"] = p.upper
            if p.fixed:
                d["fixed"] = True
            if p.iiv is not None:
                d["iiv"] = p.iiv
            if p.iiv_type != "lognormal":
                d["iiv_type"] = p.iiv_type
            if p.iiv_fixed:
                d["iiv_fixed"] = True
            if p.description:
                d["description"] = p.description
            if p.covariates:
                d["covariates"] = [_cov_to_dict(c) for c in p.covariates]
            params[p.name] = d
        out: dict[str, Any] = {
            "model": {"structure": self.structure, "interpolation": self.interpolation},
            "parameters": params,
        }
        if self.description:
            out["model"]["description"] = self.description
        if self.simulates:
            out["model"]["simulates"] = dict(self.simulates)
        if self.time_unit != "h":
            out["model"]["time_unit"] = self.time_unit
        if self.derived:
            out["derived"] = dict(self.derived)
        if self.covariate_units:
            out["covariates"] = dict(self.covariate_units)
        if self.omega_blocks:
            out["omega"] = {
                "block": [{"parameters": list(n), "values": list(v), "fixed": f} for n, v, f in self.omega_blocks]
            }
        if self.iov:
            out["iov"] = dict(self.iov)
        obs = {}
        for o in self.observations:
            d = {"output": o.output, "error": o.error}
            if o.dvid is not None:
                d["dvid"] = o.dvid
            for t in o.error_terms():
                d[t] = o.initial(t)
            if o.fixed:
                d["fixed"] = list(o.fixed)
            if o.lloq is not None:
                d["lloq"] = o.lloq
            if o.unit:
                d["unit"] = o.unit
            obs[o.name] = d
        out["observations"] = obs
        if self.structure_table is not None:
            out["structure"] = dict(self.structure_table)
        return out

    def with_estimates(self, values: Mapping[str, float]) -> "PopulationModel":
        """A copy with new initial estimates (typical values by parameter name)."""
        from dataclasses import replace

        params = tuple(replace(p, estimate=float(values[p.name])) if p.name in values else p for p in self.parameters)
        return replace(self, parameters=params)


def _cov_to_dict(c: CovariateEffect) -> dict:
    d: dict[str, Any] = {"covariate": c.covariate, "relation": c.relation}
    if c.reference is not None:
        d["reference"] = c.reference
    if c.estimate is not None:
        d["estimate"] = dict(c.estimate) if isinstance(c.estimate, Mapping) else c.estimate
    if c.fixed:
        d["fixed"] = True
    if c.levels:
        d["levels"] = list(c.levels)
    if c.condition:
        d["condition"] = c.condition
    return d


def _tril_to_full(values: Sequence[float], k: int) -> np.ndarray:
    full = np.zeros((k, k))
    idx = 0
    for i in range(k):
        for j in range(i + 1):
            full[i, j] = full[j, i] = float(values[idx])
            idx += 1
    return full


_TOP_KEYS = {"model", "parameters", "derived", "omega", "iov", "observations", "structure", "covariates"}
_PARAM_KEYS = {
    "estimate",
    "unit",
    "lower",
    "upper",
    "fixed",
    "iiv",
    "iiv_type",
    "iiv_fixed",
    "covariates",
    "description",
}
_COV_KEYS = {"covariate", "relation", "reference", "estimate", "fixed", "levels", "condition"}
_OBS_KEYS = {"dvid", "output", "error", "fixed", "lloq", "unit", *TERMS}  # TERMS: additive, proportional, sigma


def _check_keys(where: str, got: Mapping, allowed: set[str]) -> None:
    bad = sorted(set(got) - allowed)
    if bad:
        raise _fail(where, f"unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}")


def load_model(source: str | Path | Mapping[str, Any]) -> PopulationModel:
    """Read a population model from a TOML file or a mapping of the same layout.

    Parameters
    ----------
    source
        Path to a ``.toml`` file, or a mapping (e.g. from ``tomllib.loads``).

    Returns
    -------
    PopulationModel

    Raises
    ------
    ModelSpecError
        On a missing file, TOML syntax error, unknown key, missing or inconsistent entry; the message
        names the section and the fix.
    """
    src_name = None
    if isinstance(source, (str, Path)):
        from .._toml import read_toml

        path = Path(source)
        src_name = str(path)
        content, text = read_toml(path)
    else:
        content = dict(source)
        text = None
    where = f"model file {src_name}" if src_name else "population model"
    _check_keys(where, content, _TOP_KEYS)
    user_structure = None
    if "structure" in content:  # the structural model written in the file (docs/model_language.md)
        from ..models.user import compile_structure, known_parameters, register_user_model

        um = register_user_model(
            compile_structure(
                content["structure"],
                name=Path(src_name).stem if src_name else None,
                where=where,
                text=text,
                source=src_name,
                known=known_parameters(content) or set(),
            )
        )
        given = (content.get("model") or {}).get("structure")
        if given is not None and str(given) != um.name:
            raise _fail(
                f"{where} [model]",
                f"`structure = {given!r}` names another model than the [structure] "
                f"section ({um.name!r}); remove it or make them agree",
            )
        content = {**content, "model": {**(content.get("model") or {}), "structure": um.name}}
        user_structure = content["structure"]
        used = (
            set(um.param_names)
            | {n for v in (content.get("derived") or {}).values() for n in compile_expression(v).names}
            | {
                n
                for d in (content.get("observations") or {}).values()
                if isinstance(d, Mapping)
                for n in compile_expression(str(d.get("output", "CP"))).names
            }
        )
        for name in content.get("parameters") or {}:
            if name not in used:
                line = next(
                    (
                        i
                        for i, ln in enumerate((text or "").splitlines(), 1)
                        if ln.strip().startswith(f"[parameters.{name}]")
                    ),
                    None,
                )
                raise _fail(
                    where + (f", line {line}" if line else ""),
                    f"parameter {name} is never used: no equation of [structure], [derived] expression or "
                    "observation output refers to it; remove it or use it",
                )
    m = content.get("model", {})
    _check_keys(f"{where} [model]", m, {"structure", "description", "interpolation", "simulates", "time_unit"})
    sim = m.get("simulates") or {}
    if not isinstance(sim, Mapping) or not all(isinstance(v, str) for v in sim.values()):
        raise _fail(
            f"{where} [model]",
            '`simulates` must be a table such as { CL = "gabapentin.CL", '
            'V = "gabapentin.V" } (fitted parameter -> drug-library parameter of the regimen simulator)',
        )
    if "structure" not in m:
        raise _fail(where, '[model] needs `structure`, a model name such as "1cmt_oral" (see `pkpd models`)')
    params = []
    for name, d in (content.get("parameters") or {}).items():
        w = f"{where} [parameters.{name}]"
        if not isinstance(d, Mapping):
            raise _fail(w, "must be a table with at least `estimate`")
        _check_keys(w, d, _PARAM_KEYS)
        if "estimate" not in d:
            raise _fail(w, "needs `estimate` (the initial typical value)")
        covs = []
        for i, c in enumerate(d.get("covariates", [])):
            cw = f"{w} covariates[{i}]"
            if not isinstance(c, Mapping):
                raise _fail(
                    cw, 'must be an inline table such as { covariate = "WT", relation = "power", reference = 70 }'
                )
            _check_keys(cw, c, _COV_KEYS)
            if "covariate" not in c or "relation" not in c:
                raise _fail(cw, "needs `covariate` (a dataset column) and `relation`")
            covs.append(
                CovariateEffect(
                    covariate=str(c["covariate"]),
                    relation=str(c["relation"]),
                    reference=None if c.get("reference") is None else float(c["reference"]),
                    estimate=c.get("estimate"),
                    fixed=bool(c.get("fixed", False)),
                    levels=tuple(float(v) for v in c.get("levels", ())),
                    condition=c.get("condition"),
                )
            )
        try:
            params.append(
                Parameter(
                    name=str(name),
                    estimate=float(d["estimate"]),
                    unit=str(d.get("unit", "")),
                    lower=float(d.get("lower", 0.0)),
                    upper=float(d.get("upper", math.inf)),
                    fixed=bool(d.get("fixed", False)),
                    iiv=None if d.get("iiv") is None else float(d["iiv"]),
                    iiv_type=str(d.get("iiv_type", "lognormal")),
                    iiv_fixed=bool(d.get("iiv_fixed", False)),
                    covariates=tuple(covs),
                    description=str(d.get("description", "")),
                )
            )
        except (TypeError, ValueError) as exc:
            raise _fail(w, f"a value has the wrong type ({exc}); numbers must be numbers") from None
    blocks = []
    om = content.get("omega") or {}
    _check_keys(f"{where} [omega]", om, {"block"})
    for i, b in enumerate(om.get("block", [])):
        bw = f"{where} [[omega.block]] #{i + 1}"
        _check_keys(bw, b, {"parameters", "values", "fixed"})
        if "parameters" not in b or "values" not in b:
            raise _fail(bw, "needs `parameters` (names) and `values` (lower triangle, row-wise)")
        blocks.append((tuple(b["parameters"]), tuple(float(v) for v in b["values"]), bool(b.get("fixed", False))))
    obs = []
    for name, d in (content.get("observations") or {}).items():
        w = f"{where} [observations.{name}]"
        _check_keys(w, d, _OBS_KEYS)
        obs.append(
            Observation(
                name=str(name),
                output=str(d.get("output", "CP")),
                dvid=None if d.get("dvid") is None else int(d["dvid"]),
                error=str(d.get("error", "additive")),
                additive=d.get("additive"),
                proportional=d.get("proportional"),
                sigma=d.get("sigma"),
                fixed=tuple(d.get("fixed", ())),
                lloq=d.get("lloq"),
                unit=str(d.get("unit", "")),
            )
        )
    iov = {str(k): float(v) for k, v in (content.get("iov") or {}).items()}
    cu = content.get("covariates") or {}
    if not isinstance(cu, Mapping) or any(isinstance(v, Mapping) for v in cu.values()):
        raise _fail(
            f"{where} [covariates]",
            'must be a table of column = "unit", e.g. WT = "kg", '
            'CRCL = "mL/min" (the units of dataset columns, for the plots)',
        )
    return PopulationModel(
        structure=str(m["structure"]),
        parameters=tuple(params),
        observations=tuple(obs),
        derived={
            str(k): str(v) if not isinstance(v, (int, float)) else v for k, v in (content.get("derived") or {}).items()
        },
        omega_blocks=tuple(blocks),
        iov=iov,
        interpolation=str(m.get("interpolation", "nocb")),
        description=str(m.get("description", "")),
        source=src_name,
        simulates={str(k): str(v) for k, v in sim.items()},
        time_unit=m.get("time_unit", "h"),
        structure_table=user_structure,
        covariate_units={str(k): v for k, v in cu.items()},
    )
