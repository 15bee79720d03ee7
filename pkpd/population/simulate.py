"""Simulate a regimen in a population: :func:`simulate_regimen` (the population in equal compiled chunks)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from ..errors import ModelSpecError
from .options import SimOptions
from .plan import RegimenPlan
from .protocol import RegimenLike
from .results import PopulationResult

__all__ = ["simulate_regimen"]


def simulate_regimen(
    regimen: RegimenLike,
    population: pd.DataFrame,
    *,
    seed: int = 0,
    options: SimOptions | None = None,
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    dose_weights: np.ndarray | None = None,
    rescue_tables: Mapping[str, np.ndarray] | None = None,
) -> PopulationResult:
    """Simulate a regimen in a population.

    Parameters
    ----------
    regimen
        A :class:`regimens.Regimen`.
    population
        One row per patient with an ``ID`` column and the covariate columns the drugs need (see
        :mod:`pkpd.patients`; e.g. from ``spine72_population``). Optional columns ``<drug>.<PARAM>`` (e.g.
        ``oxycodone.CL``, in the drug library's units) give a patient's individual parameter value, replacing
        the covariate model and variability draw for that row (NaN: drawn as usual), and ``pain.b0``
        (untreated NRS at the end of surgery), ``pain.t_half`` (h, resolution half-life) and
        ``pain.sensitivity`` (the patient's whole multiplier of the pain curve) replace the pain model's draws — how posterior
        draws of a fitted patient are simulated (:mod:`regimens.posterior`); ``pain.scale`` replaces the
        setting's multiplier of the pain curve (``PainModel.setting_scale``: an effect shared by a group, e.g.
        one trial's surgery and institution) and ``pain.spread`` the setting's multiplier of the
        between-patient SDs of pain sensitivity and rescue propensity (``PainModel.setting_spread``);
        ``rescue.propensity`` replaces the setting's multiplier of every rescue-request hazard
        (``DemandModel.setting_propensity``: a group's readiness to ask for and give rescue opioid). A column
        naming an unknown drug parameter is an error. Columns ``z.<stream>.<j>`` give the standard-normal variability draws
        themselves (:func:`variability_columns`: a known patient under another ID). Columns
        ``outcome.<name>`` give a row its own value of a calibrated outcome-model parameter
        (:mod:`pkpd.outcome`: many parameter sets in one batched call).
    seed
        Seed of the inter-individual variability and demand draws (per patient ID).
    options
        :class:`SimOptions`.
    chunk_size
        Largest number of patients per compiled batch (bounds memory); the population is split into equal
        batches of at most this size (rounded up to a multiple of 64 per device). ``None``: the configured
        size (:func:`pkpd.batch.configure`), else sized from the free device memory
        (:func:`pkpd.batch.chunk_rows`; on CPU at most 2,048). Each batch's patients are sharded over the
        local devices (:mod:`pkpd.batch`); results do not depend on the chunk size or the device count.
    progress
        Called with the number of patients finished after each chunk (e.g. a progress-bar update).
    dose_weights
        Optional ``(n_patients, len(regimen.scheduled))`` multipliers of each scheduled item's doses per
        patient (0 = the item is not given to that patient): simulates a different schedule for every
        patient in one batched call, as if each had the regimen with those doses (how the optimizer
        evaluates per-patient proposals exactly). Weighted-out doses are left out of the dose record.
    rescue_tables
        Optional per-patient rescue rules replacing the regimen's PRN/PCA values (same items, rules and
        structure): the arrays of :meth:`RegimenPlan.rescue_tables` with a leading patient axis (``prn_thr``,
        ``prn_dose``, ``prn_start``, ``prn_stop`` (N, I, R); ``prn_int``, ``prn_cap``, ``prn_capw`` (N, I));
        intervals may not exceed the regimen's longest. The dose record then reports each patient's own
        rescue doses (how the optimizer evaluates per-patient PRN policies).

    Returns
    -------
    PopulationResult

    Raises
    ------
    ModelSpecError
        Unknown drug, a drug without analgesic PD, a nonlinear model, missing covariates, lagged rescue
        routes.
    """
    opts = options or SimOptions()
    if not isinstance(population, pd.DataFrame) or "ID" not in population:
        raise ModelSpecError("population must be a DataFrame with an ID column (one row per patient)")
    if len(population) == 0:
        raise ModelSpecError("population is empty")
    plan = RegimenPlan.build(regimen, population, opts)
    n_total = len(population)
    if dose_weights is not None:
        dose_weights = np.asarray(dose_weights, float)
        if (
            dose_weights.shape != (n_total, len(regimen.scheduled))
            or not np.all(np.isfinite(dose_weights))
            or np.any(dose_weights < 0)
        ):
            raise ModelSpecError(
                f"dose_weights must be finite, >= 0 and of shape ({n_total}, "
                f"{len(regimen.scheduled)}), got {dose_weights.shape}"
            )
    if rescue_tables is not None:
        rescue_tables = plan.check_rescue_tables(rescue_tables, n_total)
    outs = []
    done = 0
    from .. import batch as _batch

    unit = 64 * _batch.device_count()  # rows per device: a multiple of the kernel's CPU sub-batch
    if chunk_size is None:
        chunk_size = _batch.chunk_rows(_row_bytes(plan), multiple=unit)
    # equal chunks (a multiple of 64 rows per device, at most chunk_size): no chunk is mostly padding
    n_chunks = -(-n_total // max(int(chunk_size), 1))
    size = min(int(chunk_size), -(-(-(-n_total // n_chunks)) // unit) * unit, n_total)
    for start in range(0, n_total, size):
        sub = population.iloc[start : start + size]
        n_real = len(sub)
        w = None if dose_weights is None else dose_weights[start : start + size]
        rt = None if rescue_tables is None else {k: v[start : start + size] for k, v in rescue_tables.items()}
        if n_real < size:  # pad with copies of the last patient so every chunk has one compiled shape
            sub = pd.concat([sub, sub.iloc[[-1] * (size - n_real)]], ignore_index=True)
            w = None if w is None else np.concatenate([w, w[[-1] * (size - n_real)]])
            rt = None if rt is None else {k: np.concatenate([v, v[[-1] * (size - n_real)]]) for k, v in rt.items()}
        outs.append(_trim(plan.run_chunk(sub, seed, w, rt), n_real))
        done += len(sub)
        if progress is not None:
            progress(len(sub))
    return plan.collect(outs, population)


def _row_bytes(plan: RegimenPlan) -> float:
    """Estimated device memory of one patient row of the compiled kernel (bytes): its inputs (step
    propagators, dose vectors, event groups), its outputs over the grid and the per-step rescue arrays, x3
    for intermediates and copies. Used to size chunks from free memory (:func:`pkpd.batch.chunk_rows`)."""
    import jax

    item = 8 if jax.config.jax_enable_x64 else 4
    ni, R, C, M = plan.rescue_shape()
    nb, n, T = len(plan.blocks), plan.n, plan.T
    E = 2 * max(len(plan.events_template), 1)  # sub-doses (split routes, infusion pieces)
    inputs = sum(b.n * b.n for b in plan.blocks) + 2 * E * n + 3 * nb * E + ni * (n + 4 * R + 4) + 6 * nb
    per_step = (
        8
        + 2 * ni
        + ni * R
        + 2 * nb
        + (nb if plan.opts.record_concentrations else 0)
        + (n if plan.opts.record_states else 0)
    )
    return float(item * 3 * (inputs + T * per_step))


def _trim(res: dict, n: int) -> dict:
    out = {k: (v[:n] if isinstance(v, np.ndarray) else v) for k, v in res.items()}
    out["sched"] = [(j, t, d, r, a[:n], u) for (j, t, d, r, a, u) in res["sched"]]
    out["params"] = {k: v.iloc[:n] for k, v in res["params"].items()}
    return out
