"""How a random effect enters a parameter: one small class per ``iiv_type = "..."`` of a model file.

A parameter's individual value is its typical value ``TV`` (covariate relations applied) combined with the
subject's random effect ``eta`` (IIV eta plus, with ``[iov]``, the occasion's kappa); the registry
:data:`IIV_TYPES` maps the model-file name to an instance:

============ ==================================== =================================================
iiv_type     individual value                     the variance omega^2 is that of
============ ==================================== =================================================
lognormal    ``TV exp(eta)`` (default)            ``log P`` (reported also as a CV, %)
additive     ``TV + eta``                         ``P``, in the parameter's unit
proportional ``TV (1 + eta)``                     ``P / TV``
logit        ``logit P = logit TV + eta``         ``logit P`` (fractions in (0, 1))
============ ==================================== =================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # pragma: no cover
    from .spec import Parameter

__all__ = ["RandomEffect", "LogNormalEffect", "AdditiveEffect", "ProportionalEffect", "LogitEffect", "IIV_TYPES"]


@dataclass(frozen=True)
class RandomEffect:
    """A way a random effect enters a parameter."""

    name: ClassVar[str]
    #: The random effect is in the parameter's unit (``additive``); otherwise it is dimensionless.
    in_parameter_units: ClassVar[bool] = False

    def apply(self, value: jax.Array, eta: jax.Array) -> jax.Array:
        """The individual value from the typical value ``value`` and the random effect ``eta``."""
        raise NotImplementedError

    def check(self, parameter: Parameter) -> str | None:
        """What the parameter's entry in the model file lacks for this type (``None`` when fine)."""
        return None

    def cv_pct(self, variance: float) -> float:
        """The variance of the random effect as a CV of the parameter (%), NaN where there is none."""
        return math.nan


@dataclass(frozen=True)
class LogNormalEffect(RandomEffect):
    """``P = TV exp(eta)``."""

    name: ClassVar[str] = "lognormal"

    def apply(self, value, eta):
        return value * jnp.exp(eta)

    def cv_pct(self, variance):
        # exp(x) - 1 that gives inf instead of raising on overflow (a diverged variance)
        return 100.0 * math.sqrt(math.expm1(variance) if variance < 700 else math.inf)


@dataclass(frozen=True)
class AdditiveEffect(RandomEffect):
    """``P = TV + eta``."""

    name: ClassVar[str] = "additive"
    in_parameter_units: ClassVar[bool] = True

    def apply(self, value, eta):
        return value + eta


@dataclass(frozen=True)
class ProportionalEffect(RandomEffect):
    """``P = TV (1 + eta)``."""

    name: ClassVar[str] = "proportional"

    def apply(self, value, eta):
        return value * (1.0 + eta)


@dataclass(frozen=True)
class LogitEffect(RandomEffect):
    """``logit P = logit TV + eta``: a fraction in (0, 1)."""

    name: ClassVar[str] = "logit"

    def apply(self, value, eta):
        return jax.nn.sigmoid(jnp.log(value) - jnp.log1p(-value) + eta)

    def check(self, parameter):
        return None if 0.0 < parameter.estimate < 1.0 else "a logit random effect needs a typical value in (0, 1)"


#: Random-effect type of each name a model file may give (``iiv_type = "logit"``).
IIV_TYPES: Mapping[str, RandomEffect] = {
    e.name: e for e in (LogNormalEffect(), AdditiveEffect(), ProportionalEffect(), LogitEffect())
}
