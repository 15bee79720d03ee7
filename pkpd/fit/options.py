"""Settings of the Bayesian estimators as typed values: :class:`NutsOptions` (:func:`pkpd.fit.fit_nuts`) and
:class:`SviOptions` (:func:`pkpd.fit.fit_svi`).

Each field is the keyword argument of the same name of its estimator, with the same default (documented
there); :meth:`NutsOptions.keywords` gives them back as keyword arguments. :func:`pkpd.fit.fit` builds one
from its own arguments (``chains``, ``warmup``, ``samples``, ``svi_steps``, ``seed``, ``progress``) and the
``**options`` it was given (:func:`bayes_options`), so an unknown option is refused by name before anything
runs. This module imports nothing heavy: the options exist without NumPyro.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["NutsOptions", "SviOptions", "bayes_options"]


class _Options:
    """Shared behaviour: the fields as keyword arguments, overrides checked by name."""

    def keywords(self) -> dict[str, Any]:
        """The settings as keyword arguments of the estimator (values as given: no copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def updated(self, method: str, overrides: Mapping[str, Any]):
        """A copy with ``overrides`` (estimator keyword -> value); an unknown name raises
        :class:`pkpd.fit.FitError` listing the known ones."""
        known = [f.name for f in fields(self)]  # type: ignore[arg-type]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            from .laplace import FitError

            raise FitError(f"unknown option(s) for method {method}: {', '.join(unknown)} (known: {', '.join(known)})")
        return replace(self, **overrides)  # type: ignore[type-var]


@dataclass(frozen=True)
class NutsOptions(_Options):
    """Settings of :func:`pkpd.fit.fit_nuts` (its keyword arguments of the same names)."""

    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    seed: int = 0
    priors: Mapping[str, Any] | None = None
    progress: bool = True
    target_accept: float = 0.8
    max_tree_depth: int | tuple[int, int] = (6, 10)
    dense_mass: bool | str = "auto"
    init_u: Any = None
    init_eta: Any = None
    init_jitter: float = 0.1
    log_likelihood: bool = True


@dataclass(frozen=True)
class SviOptions(_Options):
    """Settings of :func:`pkpd.fit.fit_svi` (its keyword arguments of the same names)."""

    num_steps: int = 2000
    learning_rate: float = 0.01
    num_draws: int = 1000
    seed: int = 0
    guide: str = "normal"
    priors: Mapping[str, Any] | None = None
    progress: bool = True
    init_u: Any = None
    init_eta: Any = None
    log_likelihood: bool = True


def bayes_options(
    method: str,
    *,
    chains: int,
    warmup: int,
    samples: int,
    svi_steps: int,
    seed: int,
    progress: bool,
    options: Mapping[str, Any],
) -> NutsOptions | SviOptions:
    """The settings of a NUTS (``method="nuts"``) or SVI fit from :func:`pkpd.fit.fit`'s arguments: ``chains``,
    ``warmup``, ``samples`` (NUTS: kept draws per chain; SVI: draws of the fitted guide), ``svi_steps``,
    ``seed``, ``progress`` (``None``: the estimator's default), then ``options`` (estimator keyword -> value,
    e.g. ``target_accept``), which win.

    Raises
    ------
    FitError
        An option the estimator does not have.
    """
    if method == "nuts":
        given = dict(num_chains=chains, num_warmup=warmup, num_samples=samples, seed=seed, progress=progress)
        base: NutsOptions | SviOptions = NutsOptions(**{k: v for k, v in given.items() if v is not None})
    elif method == "svi":
        given = dict(num_steps=svi_steps, num_draws=samples, seed=seed, progress=progress)
        base = SviOptions(**{k: v for k, v in given.items() if v is not None})
    else:
        from .laplace import FitError

        raise FitError(f"bayes_options: method must be 'nuts' or 'svi', got {method!r}")
    return base.updated(method, options)
