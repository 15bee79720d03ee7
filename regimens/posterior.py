"""Posterior scenarios for the optimizer: a patient's forecast posterior as draws of simulator parameters.

A population model fitted with :mod:`pkpd.fit` describes one drug's PK (and possibly pain scores) with its own
parameter names. Its ``[model] simulates`` table says which regimen-simulator quantity each fitted parameter
is (``CL = "gabapentin.CL"``: the drug library's gabapentin clearance, same unit; ``B0 = "pain.b0"``: the
untreated pain score). :func:`posterior_draws` turns the individual forecast of one patient
(:func:`pkpd.fit.forecast`, or the directory ``pkpd forecast`` writes: ``draws.csv`` and ``model.toml``) into
``n`` rows of override columns (``gabapentin.CL``, ...) that :func:`regimens.optimize.optimize_patient` uses as
the patient's scenario draws; every other quantity (other drugs, demand for rescue) keeps its population-prior
draw. Posterior draws are resampled systematically to ``n`` rows (every draw the same number of times, up to
one), so the scenario set follows the posterior without adding noise.

References
----------
Keizer RJ et al. Model-informed precision dosing at the bedside. CPT Pharmacometrics Syst Pharmacol
2018;7:785-787. clinical.md 4 ("Keep S = 64-256 draws per patient as fixed scenarios").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._condition import RegimenError

__all__ = ["PAIN_TARGETS", "posterior_draws", "check_link"]

#: Pain-model quantities a fitted parameter may stand for (see :func:`pkpd.population.simulate_regimen`).
PAIN_TARGETS = {"pain.b0": "NRS points", "pain.t_half": "h", "pain.sensitivity": "1"}


def check_link(model) -> dict[str, str]:
    """The model's ``simulates`` table, validated: every target is a drug-library parameter (with the same
    unit as the fitted parameter, when both state one) or a pain-model quantity; every source is a fitted
    parameter or a derived one. Raises :class:`RegimenError` with what to change."""
    from pkpd.drugs import get_drug

    link = dict(getattr(model, "simulates", {}) or {})
    if not link:
        raise RegimenError(
            "the model has no [model] simulates table, so its posterior cannot drive the regimen "
            'simulator: add e.g. simulates = { CL = "gabapentin.CL", V = "gabapentin.V" } to '
            "[model] (fitted parameter -> drug-library parameter, same units)"
        )
    names = {p.name: p for p in model.parameters}
    derived = set(getattr(model, "derived", {}) or {})
    for src, tgt in link.items():
        if src not in names and src not in derived:
            raise RegimenError(
                f"simulates: {src!r} is not a parameter of the model (parameters: "
                f"{', '.join(sorted(set(names) | derived))})"
            )
        if tgt in PAIN_TARGETS:
            continue
        if "." not in tgt:
            raise RegimenError(
                f"simulates: {src} -> {tgt!r}: write <drug>.<PARAM> (e.g. gabapentin.CL) or one of "
                f"{', '.join(PAIN_TARGETS)}"
            )
        drug, par = tgt.split(".", 1)
        try:
            d = get_drug(drug)
        except Exception as exc:  # unknown drug: the library's own message lists the known ones
            raise RegimenError(f"simulates: {src} -> {tgt}: {exc}") from None
        lib = {p.name: p for p in d.params}
        if par not in lib:
            raise RegimenError(f"simulates: {src} -> {tgt}: {d.name} has no parameter {par} (it has {', '.join(lib)})")
        if d.name != drug:
            raise RegimenError(f"simulates: write the library name {d.name}.{par}, not {tgt}")
        u_fit = names[src].unit if src in names else ""
        u_lib = getattr(lib[par], "unit", "") or ""
        if u_fit and u_lib and u_fit.replace(" ", "") != u_lib.replace(" ", ""):
            raise RegimenError(
                f"simulates: {src} is in {u_fit} but {tgt} is in {u_lib}: refit or rescale the model so the units agree"
            )
    return link


def posterior_draws(source: Any, n: int) -> tuple[pd.DataFrame, list[str]]:
    """``n`` scenario rows of simulator overrides from a patient's forecast posterior.

    Parameters
    ----------
    source
        A :class:`pkpd.fit.Forecast` together with its model as ``(forecast, model)`` (a
        :class:`~pkpd.fit.spec.PopulationModel`, a model file or the same mapping), or the path of a
        directory written by ``pkpd forecast`` (``draws.csv`` and ``model.toml``).
    n
        Number of rows (the optimizer's ``draws``).

    Returns
    -------
    rows, notes
        ``rows``: ``n`` rows, one column per linked quantity (``gabapentin.CL``, ``pain.b0``...);
        ``notes``: what was used (for the proposal's explanation).

    Raises
    ------
    RegimenError
        A missing directory or file, a model without a valid ``simulates`` table, non-finite draws.
    """
    from pkpd.fit.spec import load_model

    if isinstance(source, (str, Path)):
        d = Path(source)
        if not d.is_dir():
            raise RegimenError(f"posterior directory {d} does not exist (run `pkpd forecast ... --out {d}` first)")
        if not (d / "draws.csv").is_file():
            hint = (
                " (this looks like a `pkpd fit` directory: forecast the patient first with `pkpd forecast "
                f"PATIENT.csv --model {d}/model.toml --out FORECAST_DIR` and pass FORECAST_DIR)"
                if (d / "parameters.csv").is_file()
                else ""
            )
            raise RegimenError(f"{d} has no draws.csv{hint}")
        if not (d / "model.toml").is_file():
            raise RegimenError(f"{d} has no model.toml (the model the forecast used; `pkpd forecast` writes it)")
        draws = pd.read_csv(d / "draws.csv")
        model = load_model(d / "model.toml")
        where = str(d)
    else:
        fc, model = source
        from pkpd.fit.spec import PopulationModel

        model = model if isinstance(model, PopulationModel) else load_model(model)
        draws = fc.draws
        where = "the forecast"
    link = check_link(model)
    missing = [s for s in link if s not in draws.columns]
    if missing:
        raise RegimenError(f"{where}: the posterior draws have no column {', '.join(missing)}")
    vals = draws[list(link)].to_numpy(float)
    if not np.all(np.isfinite(vals)) or np.any(vals <= 0):
        raise RegimenError(f"{where}: posterior draws must be finite and positive")
    m = len(vals)
    if m == 0 or n < 1:
        raise RegimenError("need at least one posterior draw and n >= 1")
    idx = np.floor((np.arange(n) + 0.5) * m / n).astype(int)  # systematic: every draw ~n/m times, in order
    rows = pd.DataFrame({tgt: vals[idx, j] for j, tgt in enumerate(link.values())})
    med = {tgt: float(np.median(vals[:, j])) for j, tgt in enumerate(link.values())}
    notes = [
        f"scenario draws: the patient's forecast posterior ({m} draws from {where}, resampled to {n}) for "
        + ", ".join(f"{t} (median {v:.4g})" for t, v in med.items())
        + "; other quantities from the population prior"
    ]
    return rows, notes
