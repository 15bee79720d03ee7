"""Covariate relations: one small class per ``relation = "..."`` of a model file's covariate entries.

A relation multiplies a parameter's typical value by a factor of a covariate (``factor`` in the table of
:mod:`pkpd.fit.spec`); the registry :data:`RELATIONS` maps the model-file name to an instance. A relation
knows its estimated coefficients (names, bounds, default initial value), what a model file must give for
it (:meth:`Relation.check`), the covariate values it accepts (:meth:`Relation.invalid_values`), the data it
precomputes from the dataset once (:meth:`Relation.data`, host) and how it applies the factor in the
likelihood (:meth:`Relation.apply`, JAX):

============== =============================== =========================== ================================
relation       data (precomputed per record)   apply (``value`` x factor)  coefficient
============== =============================== =========================== ================================
power          ``log(cov / reference)``        ``value exp(theta data)``   exponent, unbounded
linear         ``cov - reference``             ``value (1 + theta data)``  slope, unbounded
exponential    ``cov - reference``             ``value exp(theta data)``   slope, unbounded
proportional   ``cov / reference``             ``value data``              none
categorical    one-hot of non-reference levels ``value prod theta_l^data`` factor per level, > 0
indicator      ``condition`` (bool)            ``value theta^data``        factor, > 0
activity_score ``cov / reference``             ``value (1 - theta +        fraction in (0, 1)
                                               theta data)``
============== =============================== =========================== ================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..expr import compile_expression

if TYPE_CHECKING:  # pragma: no cover
    from .spec import CovariateEffect

__all__ = [
    "Relation",
    "Power",
    "Linear",
    "Exponential",
    "Proportional",
    "Categorical",
    "Indicator",
    "ActivityScore",
    "RELATIONS",
    "relation",
]

_REAL = (-math.inf, math.inf)


def _fmt_level(v: float) -> str:
    return f"{v:g}"


@dataclass(frozen=True)
class Relation:
    """A covariate relation (the base class: one estimated coefficient, a reference value)."""

    name: ClassVar[str]
    #: Bounds of the estimated coefficient(s) (``None``: nothing is estimated).
    bounds: ClassVar[tuple[float, float] | None] = _REAL
    #: Initial coefficient when the model file gives no ``estimate``.
    default: ClassVar[float] = 0.0
    #: The model file must give a finite ``reference`` (and a positive one when ``positive_reference``).
    needs_reference: ClassVar[bool] = True
    positive_reference: ClassVar[bool] = False
    #: The covariate takes a few values (levels): plotted as categories.
    categorical: ClassVar[bool] = False

    # ---- the model file -----------------------------------------------------------------------------
    def coefficient_names(self, effect: CovariateEffect, parameter: str) -> list[str]:
        """Names of the estimated coefficients, as shown in parameter tables."""
        return [f"{parameter}~{effect.covariate}({self.name})"]

    def initial(self, effect: CovariateEffect) -> list[float]:
        """Initial values of the coefficients."""
        return [float(self.default if effect.estimate is None else effect.estimate)]

    def estimate_entry(self, effect: CovariateEffect, values: list[float]) -> Any:
        """The ``estimate`` of the model file's entry holding the coefficient values ``values``."""
        return values[0]

    def columns(self, effect: CovariateEffect) -> set[str]:
        """Dataset columns the relation reads."""
        return {effect.covariate}

    def check(self, effect: CovariateEffect) -> str | None:
        """What the model file's entry lacks for this relation (``None`` when complete)."""
        if self.needs_reference:
            if effect.reference is None or not np.isfinite(effect.reference):
                return f"a {self.name} relation needs a finite `reference` value"
            if self.positive_reference and effect.reference <= 0:
                return f"a {self.name} relation needs reference > 0"
        return None

    # ---- the dataset --------------------------------------------------------------------------------
    def invalid_values(self, effect: CovariateEffect, values: np.ndarray, parameter: str) -> tuple[np.ndarray, str]:
        """Records whose covariate value the relation cannot use (mask over ``values``) and the message."""
        return np.zeros(np.shape(values), bool), ""

    def data(
        self, effect: CovariateEffect, cov: Mapping[str, np.ndarray], shape: tuple[int, int], parameter: str
    ) -> np.ndarray:
        """What :meth:`apply` reads at every record, from the padded covariate arrays ``cov`` (name ->
        ``shape``), computed once on the host."""
        raise NotImplementedError

    # ---- the likelihood -----------------------------------------------------------------------------
    def apply(self, theta: jax.Array, cov: jax.Array, value: jax.Array) -> jax.Array:
        """``value`` times the relation's factor, with coefficients ``theta`` and the precomputed data ``cov``
        (:meth:`data`)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Power(Relation):
    """``(cov / reference) ** theta``: allometric weight, age."""

    name: ClassVar[str] = "power"
    default: ClassVar[float] = 0.75
    positive_reference: ClassVar[bool] = True

    def invalid_values(self, effect, values, parameter):
        return np.isfinite(values) & (values <= 0), f"a power relation on {parameter} needs {effect.covariate} > 0"

    def data(self, effect, cov, shape, parameter):
        return np.log(cov[effect.covariate] / effect.reference)

    def apply(self, theta, cov, value):
        return value * jnp.exp(theta[0] * cov)  # cov = log(covariate / reference)


@dataclass(frozen=True)
class Linear(Relation):
    """``1 + theta * (cov - reference)``: creatinine clearance, albumin."""

    name: ClassVar[str] = "linear"

    def data(self, effect, cov, shape, parameter):
        return cov[effect.covariate] - effect.reference

    def apply(self, theta, cov, value):
        return value * (1.0 + theta[0] * cov)  # cov = covariate - reference


@dataclass(frozen=True)
class Exponential(Relation):
    """``exp(theta * (cov - reference))``: age on a log scale."""

    name: ClassVar[str] = "exponential"

    def data(self, effect, cov, shape, parameter):
        return cov[effect.covariate] - effect.reference

    def apply(self, theta, cov, value):
        return value * jnp.exp(theta[0] * cov)  # cov = covariate - reference


@dataclass(frozen=True)
class Proportional(Relation):
    """``cov / reference``, nothing estimated: dose per kg."""

    name: ClassVar[str] = "proportional"
    bounds: ClassVar[tuple[float, float] | None] = None
    positive_reference: ClassVar[bool] = True

    def coefficient_names(self, effect, parameter):
        return []

    def initial(self, effect):
        return []

    def invalid_values(self, effect, values, parameter):
        return np.isfinite(values) & (values < 0), f"{self.name} relation on {parameter} needs {effect.covariate} >= 0"

    def data(self, effect, cov, shape, parameter):
        return cov[effect.covariate] / effect.reference

    def apply(self, theta, cov, value):
        return value * cov  # cov = covariate / reference


@dataclass(frozen=True)
class Categorical(Relation):
    """``theta_level`` (reference level: 1): sex, formulation, phenotype class."""

    name: ClassVar[str] = "categorical"
    bounds: ClassVar[tuple[float, float] | None] = (0.0, math.inf)
    default: ClassVar[float] = 1.0
    needs_reference: ClassVar[bool] = False
    categorical: ClassVar[bool] = True

    def coefficient_names(self, effect, parameter):
        return [f"{parameter}~{effect.covariate}={_fmt_level(v)}" for v in effect.levels[1:]]

    def initial(self, effect):
        est = effect.estimate or {}
        return [
            float(est.get(_fmt_level(v), est.get(v, self.default)) if isinstance(est, Mapping) else est)
            for v in effect.levels[1:]
        ]

    def estimate_entry(self, effect, values):
        return {_fmt_level(lv): v for lv, v in zip(effect.levels[1:], values)}

    def check(self, effect):
        if len(effect.levels) < 2:
            return (
                "a categorical relation needs `levels` with at least two values, the first being the reference "
                "level (factor 1)"
            )
        return None

    def invalid_values(self, effect, values, parameter):
        bad = np.isfinite(values) & ~np.isin(values, effect.levels)
        return bad, (
            f"{effect.covariate} takes values {', '.join(sorted({f'{x:g}' for x in values[bad]}))} not among the "
            f"levels {', '.join(f'{x:g}' for x in effect.levels)} declared for {parameter}"
        )

    def data(self, effect, cov, shape, parameter):
        c = cov[effect.covariate]
        return np.stack([(c == lv).astype(float) for lv in effect.levels[1:]], axis=-1)

    def apply(self, theta, cov, value):
        return value * jnp.exp(jnp.einsum("nrl,l->nr", cov, jnp.log(theta)))  # cov: one-hot, non-reference levels


@dataclass(frozen=True)
class Indicator(Relation):
    """``theta ** condition``: ``condition = "CYP2D6_AS < 1"``, an expression of dataset columns."""

    name: ClassVar[str] = "indicator"
    bounds: ClassVar[tuple[float, float] | None] = (0.0, math.inf)
    default: ClassVar[float] = 1.0
    needs_reference: ClassVar[bool] = False

    def coefficient_names(self, effect, parameter):
        return [f"{parameter}~[{effect.condition}]"]

    def columns(self, effect):
        return set(compile_expression(effect.condition or "0").names)

    def check(self, effect):
        return None if effect.condition else 'an indicator relation needs `condition`, e.g. "CYP2D6_AS < 1"'

    def data(self, effect, cov, shape, parameter):
        cond = compile_expression(effect.condition, name=f"{parameter} indicator")
        return np.asarray(cond.evaluate(cov, np), bool) & np.ones(shape, bool)

    def apply(self, theta, cov, value):
        return value * jnp.where(cov, theta[0], 1.0)  # cov: the condition


@dataclass(frozen=True)
class ActivityScore(Relation):
    """``(1 - theta) + theta * cov / reference``: CYP activity score; ``theta`` = fraction of clearance by the
    enzyme at the reference score."""

    name: ClassVar[str] = "activity_score"
    bounds: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    default: ClassVar[float] = 0.5
    positive_reference: ClassVar[bool] = True

    def invalid_values(self, effect, values, parameter):
        return np.isfinite(values) & (values < 0), f"{self.name} relation on {parameter} needs {effect.covariate} >= 0"

    def data(self, effect, cov, shape, parameter):
        return cov[effect.covariate] / effect.reference

    def apply(self, theta, cov, value):
        return value * ((1.0 - theta[0]) + theta[0] * cov)  # cov = covariate / reference


#: Covariate relation of each name a model file may give (``relation = "power"``), in table order.
RELATIONS: Mapping[str, Relation] = {
    r.name: r for r in (Power(), Linear(), Exponential(), Proportional(), Categorical(), Indicator(), ActivityScore())
}


def relation(name: str) -> Relation:
    """The covariate relation called ``name`` in model files (:data:`RELATIONS`); ``KeyError`` if unknown."""
    return RELATIONS[name]
