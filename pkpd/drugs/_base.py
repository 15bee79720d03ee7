"""Data classes of the drug library: sourced parameters, covariate effects and drug entries.

Every number in a :class:`Drug` carries a :class:`Source` (citation as given in
``shared/reference/models.md``) and an ``unverified`` flag for values marked **UNVERIFIED** there.
:meth:`Drug.param_spec` turns an entry into the ``{name: constant | expression}`` mapping accepted by
:func:`pkpd.simulate`, with covariate effects written as expressions of dataset columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..errors import ModelSpecError

if TYPE_CHECKING:
    from ..models import CompartmentModel

__all__ = ["Covariate", "Drug", "Param", "Source", "micro_constant_params"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_COLUMN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: NONMEM record columns: referenced by some expressions (e.g. a dose-dependent F1 uses AMT) but not covariates.
_RECORD_COLUMNS = frozenset({"ID", "TIME", "EVID", "AMT", "CMT", "RATE", "II", "ADDL", "SS", "DV", "MDV"})
_FORMS = ("power", "linear", "exponential", "indicator")


@dataclass(frozen=True)
class Source:
    """Where a number was read: ``citation`` (paper, as in models.md), ``detail`` (table / secondary source)."""

    citation: str
    detail: str = ""
    unverified: bool = False

    def __post_init__(self) -> None:
        if not str(self.citation).strip():
            raise ModelSpecError("Source.citation must be non-empty")

    def __str__(self) -> str:
        return f"{self.citation} ({self.detail})" if self.detail else self.citation


@dataclass(frozen=True)
class Param:
    """One parameter of a drug entry.

    ``value`` is a number, or a string expression of other parameters of the same entry (a derived
    parameter, e.g. ``"(K30 + K34) * V"``); derivations must be explained in ``note``.
    ``iiv_cv`` is the inter-individual variability as CV (fraction, 0.357 = 35.7 %) where the source gives
    a CV; ``iiv_sd`` is the log-scale SD (omega) where the source gives that instead.
    """

    name: str
    value: float | str
    unit: str
    description: str
    source: Source
    iiv_cv: float | None = None
    unverified: bool = False
    note: str = ""
    iiv_sd: float | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ModelSpecError(f"parameter name {self.name!r} must be alphanumeric, starting with a letter")
        if not str(self.unit).strip():
            raise ModelSpecError(f"parameter {self.name}: unit must be non-empty (use '1' for dimensionless)")
        if not isinstance(self.value, (int, float, str)) or isinstance(self.value, bool):
            raise ModelSpecError(f"parameter {self.name}: value must be a number or an expression string")
        if self.iiv_cv is not None and not self.iiv_cv >= 0:
            raise ModelSpecError(f"parameter {self.name}: iiv_cv must be >= 0")
        if self.iiv_sd is not None and not self.iiv_sd >= 0:
            raise ModelSpecError(f"parameter {self.name}: iiv_sd must be >= 0")

    @property
    def derived(self) -> bool:
        return isinstance(self.value, str)

    @property
    def is_unverified(self) -> bool:
        return bool(self.unverified or self.source.unverified)


@dataclass(frozen=True)
class Covariate:
    """A covariate effect on parameter ``param``.

    Forms (``P`` = typical value, ``X`` = covariate column, ``R`` = reference, ``c`` = coefficient):
    ``power``: P*(X/R)**c; ``linear``: P*(1 + c*(X - R)); ``exponential``: P*exp(c*(X - R));
    ``indicator``: P*c**X (X is 0/1, c the multiplicative factor when X = 1; ``reference`` unused).
    """

    param: str
    covariate: str
    form: Literal["power", "linear", "exponential", "indicator"]
    reference: float | None
    coefficient: float
    source: Source
    unverified: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if self.form not in _FORMS:
            raise ModelSpecError(f"covariate form must be one of {_FORMS}, got {self.form!r}")
        if not _COLUMN.match(self.covariate):
            raise ModelSpecError(f"covariate column name {self.covariate!r} is not a valid name")
        if self.form != "indicator" and self.reference is None:
            raise ModelSpecError(f"covariate {self.covariate} on {self.param}: form {self.form} needs a reference")
        if self.form == "power" and not self.reference > 0:
            raise ModelSpecError(f"covariate {self.covariate} on {self.param}: power reference must be > 0")

    def factor(self) -> str:
        """The multiplicative factor as an expression string."""
        x, r, c = self.covariate, self.reference, self.coefficient
        if self.form == "power":
            return f"({x}/{r!r})**{c!r}"
        if self.form == "linear":
            return f"(1 + {c!r}*({x} - {r!r}))"
        if self.form == "exponential":
            return f"exp({c!r}*({x} - {r!r}))"
        return f"{c!r}**{x}"

    @property
    def is_unverified(self) -> bool:
        return bool(self.unverified or self.source.unverified)


@dataclass(frozen=True)
class Drug:
    """A drug entry: a built-in structural model plus sourced parameter values.

    ``routes`` maps a route label (``"po"``, ``"po_er"``, ``"iv"``, ``"infiltration"``...) to the CMT number of
    ``model`` that doses of that route go into. ``structure`` (default ``None``: the built-in model named by
    ``model``) is a structural model object used instead, e.g. one written in the model language
    (:func:`pkpd.drugs.with_structure`, docs/model_language.md); ``model`` then holds its name.
    """

    name: str
    drug_class: str
    model: str
    params: tuple[Param, ...]
    covariates: tuple[Covariate, ...] = ()
    routes: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    structure: CompartmentModel | None = None

    def __post_init__(self) -> None:
        model = self.structural_model()  # ModelSpecError for unknown models
        names = [p.name for p in self.params]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ModelSpecError(f"drug {self.name}: duplicate parameters {dup}")
        missing = [p for p in model.param_names if p not in names]
        if missing:
            raise ModelSpecError(
                f"drug {self.name}: model {self.model} needs parameter{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)}; the entry defines {', '.join(names) or 'nothing'}"
            )
        for cov in self.covariates:
            if cov.param not in names:
                raise ModelSpecError(f"drug {self.name}: covariate {cov.covariate} on unknown parameter {cov.param}")
            if self._param(cov.param).derived:
                raise ModelSpecError(
                    f"drug {self.name}: covariate on derived parameter {cov.param}; "
                    "put it on one of the parameters it is derived from"
                )
            if cov.covariate in names:
                raise ModelSpecError(f"drug {self.name}: covariate column {cov.covariate} clashes with a parameter")
        n_cmt = model.n_cmt
        for label, cmt in self.routes.items():
            if not isinstance(cmt, int) or cmt < 1 or (n_cmt is not None and cmt > n_cmt):
                raise ModelSpecError(
                    f"drug {self.name}: route {label!r} -> CMT {cmt!r} is not a compartment of model {self.model}"
                )
        object.__setattr__(self, "routes", dict(self.routes))

    def structural_model(self):
        """The structural model of the entry: ``structure`` when given, else the built-in model ``model``.

        Returns
        -------
        pkpd.models.CompartmentModel

        Raises
        ------
        ModelSpecError
            If ``model`` names no known model.
        """
        if self.structure is not None:
            return self.structure
        from ..models import get_model

        return get_model(self.model)

    def _param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise ModelSpecError(f"drug {self.name} has no parameter {name}")

    def param_spec(self) -> dict[str, str | float]:
        """Parameter mapping for :func:`pkpd.simulate` (covariate effects as column expressions)."""
        out: dict[str, str | float] = {}
        for p in self.params:
            if p.derived:
                out[p.name] = p.value
                continue
            covs = [c for c in self.covariates if c.param == p.name]
            out[p.name] = (
                float(p.value) if not covs else " * ".join([repr(float(p.value))] + [c.factor() for c in covs])
            )
        return out

    def covariates_needed(self) -> tuple[str, ...]:
        """Dataset columns the parameter expressions reference (sorted, unique).

        Includes the columns of covariate effects and any column named in a derived expression, but not the
        NONMEM record columns (``AMT``, ``TIME``...) that some expressions use.
        """
        from ..expr import compile_expression

        names = {p.name for p in self.params}
        cols = {c.covariate for c in self.covariates}
        for p in self.params:
            if p.derived:
                cols |= {c for c in compile_expression(p.value).names if c not in names}
        return tuple(sorted(cols - _RECORD_COLUMNS))

    def unverified_params(self) -> tuple[str, ...]:
        """Names of parameters (and ``PARAM~COV`` covariate effects) flagged UNVERIFIED."""
        out = [p.name for p in self.params if p.is_unverified]
        out += [f"{c.param}~{c.covariate}" for c in self.covariates if c.is_unverified]
        return tuple(out)

    def cmt(self, route: str) -> int:
        """CMT number for a route label."""
        try:
            return self.routes[route]
        except KeyError:
            raise ModelSpecError(f"drug {self.name}: unknown route {route!r}; known: {sorted(self.routes)}") from None

    def describe(self) -> str:
        """Human-readable table: name, value, unit, IIV, source, UNVERIFIED flag."""
        rows = [("name", "value", "unit", "IIV", "source", "flag")]
        for p in self.params:
            iiv = (
                f"{100 * p.iiv_cv:.1f}% CV"
                if p.iiv_cv is not None
                else f"SD {p.iiv_sd:g} (log)"
                if p.iiv_sd is not None
                else "-"
            )
            val = p.value if p.derived else f"{p.value:g}"
            rows.append((p.name, str(val), p.unit, iiv, str(p.source), "UNVERIFIED" if p.is_unverified else ""))
        for c in self.covariates:
            rows.append(
                (
                    f"{c.param}~{c.covariate}",
                    f"{c.form} ref={c.reference} coef={c.coefficient:g}",
                    "-",
                    "-",
                    str(c.source),
                    "UNVERIFIED" if c.is_unverified else "",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = [
            f"{self.name} ({self.drug_class}); model {self.model}; routes "
            + ", ".join(f"{k}->CMT {v}" for k, v in self.routes.items())
        ]
        for i, r in enumerate(rows):
            lines.append("  " + "  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip())
            if i == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        if self.notes:
            lines.append("notes:")
            lines += [f"  - {n}" for n in self.notes]
        if self.references:
            lines.append("references:")
            lines += [f"  - {r}" for r in self.references]
        return "\n".join(lines)


def micro_constant_params(
    source: Source,
    *,
    k10: str = "K10",
    k12: str = "K12",
    k13: str = "K13",
    k21: str = "K21",
    k31: str = "K31",
    v1: str = "V1",
    per_minute: bool = True,
) -> tuple[Param, ...]:
    """Derived ``CL, Q2, V2, Q3, V3`` (L/h, L) of a 3-compartment model published as micro-constants.

    ``CL = k10 V1``, ``Q2 = k12 V1 = k21 V2``, ``Q3 = k13 V1 = k31 V3`` (NONMEM ADVAN11 TRANS1 -> TRANS4);
    ``per_minute`` converts rate constants given in 1/min to the library's 1/h (x 60). The arguments name
    the parameters of the entry holding the micro-constants and the central volume.
    """
    m = " * 60" if per_minute else ""
    unit = " (x 60: 1/min -> 1/h)" if per_minute else ""
    return (
        Param("CL", f"{k10}{m} * {v1}", "L/h", "clearance k10*V1 (derived)", source, note="CL = k10*V1" + unit),
        Param(
            "Q2",
            f"{k12}{m} * {v1}",
            "L/h",
            "inter-compartmental clearance k12*V1 (derived)",
            source,
            note="Q2 = k12*V1" + unit,
        ),
        Param(
            "V2",
            f"{k12} * {v1} / {k21}",
            "L",
            "first peripheral volume k12*V1/k21 (derived)",
            source,
            note="mass balance Q2 = k12*V1 = k21*V2",
        ),
        Param(
            "Q3",
            f"{k13}{m} * {v1}",
            "L/h",
            "inter-compartmental clearance k13*V1 (derived)",
            source,
            note="Q3 = k13*V1" + unit,
        ),
        Param(
            "V3",
            f"{k13} * {v1} / {k31}",
            "L",
            "second peripheral volume k13*V1/k31 (derived)",
            source,
            note="mass balance Q3 = k13*V1 = k31*V3",
        ),
    )
