"""One call from a dataset and a model file to a finished population fit: :func:`fit`.

>>> from pkpd.datasets import load_theoph
>>> res = fit(load_theoph(), "examples/models/theoph.toml")            # doctest: +SKIP
>>> print(res.summary_text())                                           # doctest: +SKIP
>>> res.save("theoph_fit")                                              # doctest: +SKIP

The command line ``pkpd fit DATA.csv --model MODEL.toml --method laplace --out DIR`` is this function
followed by :meth:`FitResult.save`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .laplace import FitError, fit_laplace
from .options import NutsOptions, bayes_options
from .problem import build_problem
from .result import FitResult, build_result
from .spec import PopulationModel, load_model

__all__ = ["METHODS", "fit"]

METHODS = ("laplace", "nuts", "svi")


def fit(
    data: str | Path | pd.DataFrame,
    model: str | Path | Mapping[str, Any] | PopulationModel,
    method: str = "laplace",
    *,
    chains: int = 4,
    warmup: int = 1000,
    samples: int = 1000,
    svi_steps: int = 2000,
    seed: int = 0,
    progress: bool = False,
    vpc_replicates: int = 200,
    npde_replicates: int = 1000,
    vpc_bins: int = 8,
    covariance: bool = True,
    solver: str = "auto",
    fine_grid: bool = True,
    callback: Callable[[int, float], None] | None = None,
    status: Callable[[str], None] | None = None,
    vpc_stratify: str | None = None,
    ignore=None,
    accept=None,
    **options,
) -> FitResult:
    """Fit a population model to a NONMEM-format dataset and compute every output.

    Parameters
    ----------
    data
        Dataset: CSV path or DataFrame (see :func:`pkpd.fit.build_problem` for the columns).
    model
        Population model: TOML path, mapping of the same layout, or a :class:`PopulationModel`.
    method
        ``"laplace"`` (maximum likelihood, Laplace approximation, :func:`pkpd.fit.fit_laplace`),
        ``"nuts"`` (NUTS sampling of the posterior) or ``"svi"`` (variational inference); the last two
        come from :mod:`pkpd.fit.bayes`.
    chains, warmup, samples
        NUTS: chains, warm-up iterations and kept draws per chain; SVI: ``samples`` draws of the fitted
        guide.
    svi_steps
        SVI: optimization steps.
    seed
        Random seed (sampling, simulations of the NPDE and VPC).
    vpc_replicates, npde_replicates
        Simulated datasets for the visual predictive check and the NPDE.
    vpc_bins
        Time bins per observation type in the VPC.
    vpc_stratify
        Dataset column (a categorical covariate, say) stratifying the prediction-corrected VPC (pcvpc.png):
        one row of panels per value; a column with more than 6 values is split at its median.
    ignore, accept
        NONMEM ``$DATA`` record selection (:func:`pkpd.data.record_filter`): ``ignore`` characters (``"@"``)
        or conditions (``"(DV.EQ.0,TIME.GT.24)"``), or ``accept`` conditions (``"(DVID.EQ.1)"``); the rows
        they drop are not fitted (nor in the NCA and the diagnostics). A column named ``C`` is NONMEM's
        comment flag: rows with ``C`` in it are never fitted, whatever the options. The result's
        ``problem.notes`` says how many rows were left out, with their rows in the file.
    covariance
        Laplace: compute standard errors (covariance step).
    solver
        ``"auto"``, ``"analytic"`` or ``"ode"`` (:func:`pkpd.fit.build_problem`).
    fine_grid
        Individual plots on a fine time grid (one more compiled prediction) instead of the observation
        times.
    progress
        NUTS/SVI: let the sampler show its progress bar (a rich live display: not inside another one).
    callback
        Laplace: ``callback(iteration, minus2ll)`` after each optimizer iteration.
    status
        ``status(text)`` before each stage (building, estimating, diagnostics...), for progress displays.
    **options
        Passed to the fitter (Laplace: ``maxiter``, ``gtol``, ``u0``; NUTS/SVI: any field of
        :class:`~pkpd.fit.options.NutsOptions` / :class:`~pkpd.fit.options.SviOptions`, the keyword
        arguments of :func:`~pkpd.fit.fit_nuts` / :func:`~pkpd.fit.fit_svi`, which win over ``chains``,
        ``warmup``, ``samples``, ``svi_steps``, ``seed`` and ``progress``).

    Returns
    -------
    FitResult
        Parameter table, objective, individual estimates, predictions with CWRES and NPDE, NCA, VPC;
        :meth:`FitResult.save` writes them with the figures.

    Raises
    ------
    ModelSpecError
        Bad model file (syntax, unknown key, unknown parameter, omega not positive definite...).
    DatasetError
        Every dataset problem found, with 1-based rows of the file (missing file, missing covariate
        column...); :class:`pkpd.data.RecordFilterError` for a malformed IGNORE/ACCEPT option.
    FitError
        Unknown method, a method that is not available, or an estimation that cannot start.
    """
    say = status or (lambda s: None)
    t0 = time.perf_counter()
    method = str(method).lower()
    if method not in METHODS:
        raise FitError(
            f"unknown method {method!r}: choose laplace (maximum likelihood), nuts (Bayesian, "
            "sampling) or svi (Bayesian, variational)"
        )
    lap_opts = {}
    if method == "laplace":
        lap_opts = {k: options.pop(k) for k in ("maxiter", "gtol", "u0") if k in options}
        if options:
            raise FitError(
                f"unknown option(s) for method laplace: {', '.join(sorted(options))} (known: maxiter, gtol, u0)"
            )
        bayes_opts = None
    else:  # the sampler's settings, checked before anything runs
        bayes_opts = bayes_options(
            method,
            chains=chains,
            warmup=warmup,
            samples=samples,
            svi_steps=svi_steps,
            seed=seed,
            progress=progress,
            options=options,
        )
    data_source = None if isinstance(data, pd.DataFrame) else str(data)
    if isinstance(model, PopulationModel):
        spec = model
    else:
        say("reading the model")
        spec = load_model(model)
    model_source = spec.source if spec.source else (str(model) if isinstance(model, (str, Path)) else None)
    say("reading the data and building the problem")
    prob = build_problem(data, spec, solver=solver, ignore=ignore, accept=accept)
    if vpc_stratify is not None and vpc_stratify not in prob.frame:
        raise FitError(
            f"vpc_stratify: the dataset has no column {vpc_stratify!r} "
            f"(columns: {', '.join(map(str, prob.frame.columns))})"
        )
    t_build = time.perf_counter() - t0
    if bayes_opts is None:
        say("estimating (Laplace; the first evaluation compiles the model)")
        raw = fit_laplace(prob, covariance=covariance, callback=callback, **lap_opts)
        used = {"covariance": covariance, **{k: v for k, v in lap_opts.items() if k != "u0"}}
    else:
        try:
            from . import bayes
        except ImportError as exc:
            raise FitError(
                f"method {method} needs pkpd.fit.bayes, which cannot be imported ({exc}); use --method laplace"
            ) from None
        say(f"estimating ({method}; the first evaluation compiles the model)")
        if isinstance(bayes_opts, NutsOptions):
            raw = bayes.fit_nuts(prob, **bayes_opts.keywords())
            given = {"chains": chains, "warmup": warmup, "samples": samples, "seed": seed}
        else:
            raw = bayes.fit_svi(prob, **bayes_opts.keywords())
            given = {"samples": samples, "steps": svi_steps, "seed": seed}
        used = given | dict(options)  # what fit.json records: fit()'s arguments, then the options given
    t_fit = time.perf_counter() - t0 - t_build
    res = build_result(
        prob,
        method,
        raw,
        data=prob.data if prob.data is not None else data,
        data_source=data_source,
        model_source=model_source,
        vpc_replicates=vpc_replicates,
        npde_replicates=npde_replicates,
        vpc_bins=vpc_bins,
        seed=seed,
        fine_grid=fine_grid,
        options={
            "method": method,
            "solver": solver,
            **used,
            **{k: v for k, v in (("ignore", ignore), ("accept", accept)) if v},
        },
        status=say,
        vpc_stratify=vpc_stratify,
    )
    res.times.update(build_s=t_build, fit_s=t_fit, total_s=time.perf_counter() - t0)
    return res
