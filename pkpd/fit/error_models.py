"""Observation (residual-error) models: one small class per ``error = "..."`` of a model file.

Each observation type (DVID) of a :class:`~pkpd.fit.spec.PopulationModel` names its error model; the
registry :data:`ERROR_MODELS` maps that name to an instance of one of the classes below. An error model
knows

* its residual terms (:class:`ResidualTerm`: name in the model file, default initial value, unit and
  description in the tables), estimated on the log scale by :class:`~pkpd.fit.problem.Packer`;
* the scale of its likelihood (DV units, or ``log DV`` for :class:`LogNormal`): :meth:`ErrorModel.to_scale`
  for observed values and LLOQs (host), :meth:`ErrorModel.pred_scale` for predictions (JAX),
  :meth:`ErrorModel.scale_jacobian` for the derivatives of the predictions (CWRES);
* the residual SD on that scale (:meth:`ErrorModel.sd`), the per-record log-likelihood
  (:meth:`ErrorModel.log_prob`: Gaussian, with the M3 term ``log P(DV < LLOQ)`` for BLQ records), the
  simulation of a DV from a standard residual draw (:meth:`ErrorModel.simulate`), and the same likelihood
  as a NumPyro distribution (:meth:`ErrorModel.distribution`).

=============== ================================ =========================================================
name            residual SD                      likelihood of
=============== ================================ =========================================================
``additive``    ``a``                            ``DV ~ N(f, a^2)``
``proportional`` ``b |f|``                       ``DV ~ N(f, b^2 f^2)``
``combined``    ``sqrt(a^2 + b^2 f^2)``          ``DV ~ N(f, a^2 + b^2 f^2)``
``lognormal``   ``sigma`` (log scale)            ``log DV ~ N(log f, sigma^2)`` (NONMEM's
                                                 log-transform-both-sides, without the Jacobian term)
=============== ================================ =========================================================

A tiny variance (:data:`VAR_FLOOR`) is added to every residual variance so that a zero prediction with a
proportional error model gives a large but finite penalty, not a division by zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ResidualTerm",
    "ErrorModel",
    "Additive",
    "Proportional",
    "Combined",
    "LogNormal",
    "ERROR_MODELS",
    "error_model",
    "LOG2PI",
    "VAR_FLOOR",
]

LOG2PI = math.log(2.0 * math.pi)
VAR_FLOOR = 1e-12


@dataclass(frozen=True)
class ResidualTerm:
    """One estimated residual term of an error model.

    Attributes
    ----------
    name
        Key in the model file (``additive``, ``proportional``, ``sigma``) and suffix of the parameter name
        (``conc.additive``).
    default
        Initial value when the model file gives none.
    unit
        Unit in the parameter table (empty: the observation's DV unit, or ``"DV units"``).
    what
        Description in the parameter table (the observation name follows in parentheses).
    prior_unit
        What the value is, in the description of a Bayesian fit's priors.
    """

    name: str
    default: float
    unit: str
    what: str
    prior_unit: str

    def table_unit(self, dv_unit: str) -> str:
        """Unit of the term in the parameter table for an observation with DV unit ``dv_unit``."""
        return self.unit or dv_unit or "DV units"


ADDITIVE = ResidualTerm("additive", 1.0, "", "additive residual SD", "SD, DV units")
PROPORTIONAL = ResidualTerm("proportional", 0.2, "fraction", "proportional residual CV", "CV, fraction")
SIGMA = ResidualTerm("sigma", 0.2, "log scale", "residual SD of log DV", "SD of log DV")
TERMS: Mapping[str, ResidualTerm] = {t.name: t for t in (ADDITIVE, PROPORTIONAL, SIGMA)}


@dataclass(frozen=True)
class ErrorModel:
    """An observation model: the distribution of a record's DV given the model prediction ``f``.

    ``params`` arguments map the names of :attr:`terms` to their natural values (scalars or arrays that
    broadcast against ``f``). The JAX methods are elementwise in ``f``; the likelihood scale is DV units
    unless a subclass says otherwise (:class:`LogNormal`).
    """

    name: ClassVar[str]
    terms: ClassVar[tuple[ResidualTerm, ...]]
    #: What the dataset check says of records whose DV has no value on the likelihood scale
    #: (``observation type conc has ...``).
    dv_rule: ClassVar[str] = "an error model that does not accept these DV values"

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    # ---- scales ---------------------------------------------------------------------------------
    def to_scale(self, x: np.ndarray) -> np.ndarray:
        """Observed values (DV, LLOQ) on the likelihood scale (host, numpy); NaN where undefined."""
        return np.asarray(x, float)

    def pred_scale(self, f: jax.Array) -> jax.Array:
        """Predictions on the likelihood scale (JAX; finite, with finite derivatives, for every ``f``)."""
        return f

    def scale_jacobian(self, jac: np.ndarray, f: np.ndarray) -> np.ndarray:
        """Derivatives ``d f / d eta`` (rows: records) as derivatives of :meth:`pred_scale` (host)."""
        return jac

    # ---- the likelihood ---------------------------------------------------------------------------
    def sd(self, f: jax.Array, params: Mapping[str, jax.Array]) -> jax.Array:
        """Residual SD on the likelihood scale at predictions ``f``."""
        raise NotImplementedError

    def log_prob(
        self, y: jax.Array, f: jax.Array, params: Mapping[str, jax.Array], blq: jax.Array, lloq: jax.Array
    ) -> jax.Array:
        """Log-likelihood of every record: ``log N(y; pred_scale(f), sd^2)``, or for BLQ records the M3 term
        ``log P(Y < lloq)``. ``y`` and ``lloq`` are on the likelihood scale (:meth:`to_scale`)."""
        fl = self.pred_scale(f)
        sd = self.sd(f, params)
        r = (y - fl) / sd
        gauss = -0.5 * r * r - jnp.log(sd) - 0.5 * LOG2PI
        cens = jax.scipy.stats.norm.logcdf((lloq - fl) / sd)
        return jnp.where(blq, cens, gauss)

    def simulate(self, f: jax.Array, eps: jax.Array) -> jax.Array:
        """DV (DV units) from the prediction ``f`` and a residual ``eps`` drawn on the likelihood scale
        (``N(0, sd^2)``)."""
        return f + eps

    def distribution(self, f: jax.Array, params: Mapping[str, jax.Array], censored: Any = None) -> Any:
        """The observation model as a NumPyro distribution of the value on the likelihood scale: ``Normal(
        pred_scale(f), sd)``; with ``censored`` (a mask of BLQ records), left-censored: its ``log_prob`` at the
        LLOQ of a censored record is ``log P(Y < LLOQ)`` (NumPyro computes it as ``log(cdf)``, clipped at a
        tiny value; :meth:`log_prob` uses ``logcdf``, exact far into the tail)."""
        import numpyro.distributions as dist

        base = dist.Normal(self.pred_scale(f), self.sd(f, params))
        return base if censored is None else dist.LeftCensoredDistribution(base, censored=censored)


@dataclass(frozen=True)
class Additive(ErrorModel):
    """``DV = f + a eps``: constant SD ``a`` (DV units)."""

    name: ClassVar[str] = "additive"
    terms: ClassVar[tuple[ResidualTerm, ...]] = (ADDITIVE,)

    def sd(self, f, params):
        a = params["additive"]
        return jnp.broadcast_to(jnp.sqrt(a * a + VAR_FLOOR), jnp.shape(f))


@dataclass(frozen=True)
class Proportional(ErrorModel):
    """``DV = f (1 + b eps)``: SD ``b |f|`` (``b`` a CV, fraction)."""

    name: ClassVar[str] = "proportional"
    terms: ClassVar[tuple[ResidualTerm, ...]] = (PROPORTIONAL,)

    def sd(self, f, params):
        b = params["proportional"]
        return jnp.sqrt((b * f) ** 2 + VAR_FLOOR)


@dataclass(frozen=True)
class Combined(ErrorModel):
    """Additive and proportional together: SD ``sqrt(a^2 + b^2 f^2)``."""

    name: ClassVar[str] = "combined"
    terms: ClassVar[tuple[ResidualTerm, ...]] = (ADDITIVE, PROPORTIONAL)

    def sd(self, f, params):
        a, b = params["additive"], params["proportional"]
        return jnp.sqrt(a * a + (b * f) ** 2 + VAR_FLOOR)


@dataclass(frozen=True)
class LogNormal(ErrorModel):
    """``log DV = log f + sigma eps``: the likelihood is that of ``log DV`` (DV must be > 0)."""

    name: ClassVar[str] = "lognormal"
    terms: ClassVar[tuple[ResidualTerm, ...]] = (SIGMA,)
    dv_rule: ClassVar[str] = "a log-normal error model: DV must be > 0 (flag values below the LLOQ with BLQ = 1)"

    def to_scale(self, x):
        x = np.asarray(x, float)
        return np.log(np.where(x > 0, x, np.nan))

    def pred_scale(self, f):
        # double where: the log must not see f <= 0 even where unused (its derivatives would be nan);
        # a prediction of 0 is ~ exp(-690.8), far below any LLOQ
        return jnp.log(jnp.where(f > 1e-300, f, 1.0)) + jnp.where(f <= 1e-300, -690.8, 0.0)

    def scale_jacobian(self, jac, f):
        return jac / np.asarray(f)[:, None]

    def sd(self, f, params):
        s = params["sigma"]
        return jnp.broadcast_to(jnp.sqrt(s * s + VAR_FLOOR), jnp.shape(f))

    def simulate(self, f, eps):
        return jnp.maximum(f, 1e-300) * jnp.exp(eps)


#: Error model of each name a model file may give (``error = "combined"``).
ERROR_MODELS: Mapping[str, ErrorModel] = {m.name: m for m in (Additive(), Proportional(), Combined(), LogNormal())}


def error_model(name: str) -> ErrorModel:
    """The error model called ``name`` in model files (:data:`ERROR_MODELS`); ``KeyError`` if unknown."""
    return ERROR_MODELS[name]
