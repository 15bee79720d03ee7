"""A regimen prepared for one population (:class:`RegimenPlan`): drug blocks, dose-event template, rescue items,
time grid; it prepares each chunk's kernel inputs (:mod:`.arrays`, :mod:`.pd_arrays`), runs the compiled kernel
(:mod:`.kernel`) and collects the outcomes (:mod:`.results`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..drugs import get_drug
from ..errors import ModelSpecError
from ..outcome import COMBINATION_RULES, OUTCOME_PARAMETERS, outcome_posterior
from ..pd import get_pd
from .arrays import _expand, _row_cov, kernel_arrays
from .blocks import _Block, _build_block, _one_blas_thread
from .kernel import _KERNELS, _make_kernel, signature
from .options import SimOptions
from .pd_arrays import outcome_defaults, outcome_rows
from .protocol import RegimenLike
from .results import PopulationResult, collect

__all__ = ["RegimenPlan"]


@dataclass
class RegimenPlan:
    """A regimen prepared for one population: drug blocks, the dose-event template, rescue items and the time
    grid; :meth:`rescue_tables` gives its as-needed/PCA rules as per-patient arrays (the data the compiled
    kernel takes, so rescue policies of the same structure share one program). Built by
    :func:`simulate_regimen` and the optimizer; not meant to be filled in by hand."""

    regimen: RegimenLike
    opts: SimOptions
    blocks: list[_Block]
    n: int
    t0: float
    T: int
    items: list[dict]  # rescue items: kind prn/pca, drug, route, rules...
    notes: list[str]
    events_template: list  # (time, drug, route, duration) of scheduled events
    max_interval_h: float | None = None  # longest rescue interval the compiled program must allow (policies)
    rule: str = "loewe"  # combination rule (static: compiled in)
    # set while preparing a chunk (arrays.kernel_arrays): the scheduled-item index of every event and infusion
    # segment (ev_item, seg_item, n_scheduled); the memo of matrix exponentials; the variability-draw cache
    index: Any = field(default=None, init=False, repr=False, compare=False)
    _memo: dict | None = field(default=None, init=False, repr=False, compare=False)
    _zcache: Any = field(default=None, init=False, repr=False, compare=False)

    @staticmethod
    def build(regimen: RegimenLike, population: pd.DataFrame, opts: SimOptions) -> RegimenPlan:
        from ..drugs.structure import regimen_entry

        # the regimen's own model files, then SimOptions.structures (which wins for a drug named in both)
        structures = {**dict(regimen.structures), **dict(opts.structures or {})}
        drugs = []
        for name in list(regimen.drugs()):
            d = regimen_entry(name, structures)
            if d.name not in [x.name for x in drugs]:
                drugs.append(d)
        blocks, off = [], 0
        for d in drugs:
            b = _build_block(d, get_pd(d.name), off)
            blocks.append(b)
            off += b.n
        cols = set(population.columns)
        missing = {}
        for b in blocks:
            need = [c for c in b.drug.covariates_needed() if c not in cols and c != "AMT"]
            if need:
                missing[b.drug.name] = need
        if missing:
            raise ModelSpecError(
                "missing covariates: " + "; ".join(f"{k} needs {', '.join(v)}" for k, v in missing.items())
            )
        known = {f"{b.drug.name}.{k}" for b in blocks for k in b.block}
        drugs_in = {b.drug.name for b in blocks}
        bad = [
            c
            for c in population.columns
            if isinstance(c, str) and "." in c and c.split(".", 1)[0] in drugs_in and c not in known
        ]
        if bad:
            raise ModelSpecError(
                f"parameter override columns {bad} name no parameter of their drug (known: "
                f"{sorted(k for k in known if k.split('.', 1)[0] in {c.split('.', 1)[0] for c in bad})})"
            )
        dt = float(opts.dt_h)
        if not 0 < dt <= 1.0:
            raise ModelSpecError(f"dt_h must be in (0, 1] h, got {dt}")
        ev0 = _expand(regimen, _row_cov(population.iloc[0]))
        tmin = min([0.0] + [e.time_h for _, e in ev0] + [float(x.start_h) for x in (*regimen.prn, *regimen.pca)])
        t0 = np.floor(tmin / dt - 1e-9) * dt
        T = int(round((float(regimen.horizon_h) - t0) / dt)) + 1
        items = []
        groups: dict[tuple[str, str], list] = {}
        for r in regimen.prn:
            groups.setdefault((get_drug(r.drug).name, r.route), []).append(r)
        for (dname, route), rules in groups.items():
            rules = sorted(rules, key=lambda r: r.threshold_nrs)
            ints = {float(r.min_interval_h) for r in rules}
            if len(ints) > 1:
                raise ModelSpecError(
                    f"PRN rules for {dname} {route} must share one minimum interval, got {sorted(ints)} h"
                )
            caps = [r.max_per_24h for r in rules if r.max_per_24h]
            items.append(
                dict(
                    kind="prn",
                    drug=dname,
                    route=route,
                    thr=[float(r.threshold_nrs) for r in rules],
                    dose=[float(r.dose_mg) for r in rules],
                    start=[float(r.start_h) for r in rules],
                    stop=[float(r.stop_h) if r.stop_h is not None else np.inf for r in rules],
                    interval=ints.pop(),
                    cap=int(min(caps)) if caps else 0,
                    cap_window=24.0,
                )
            )
        for pc in regimen.pca:
            dname = get_drug(pc.drug).name
            cap = int(np.floor(float(pc.hourly_max_mg) / float(pc.demand_mg) + 1e-9)) if pc.hourly_max_mg else 0
            items.append(
                dict(
                    kind="pca",
                    drug=dname,
                    route=pc.route,
                    thr=[0.0],
                    dose=[float(pc.demand_mg)],
                    start=[float(pc.start_h)],
                    stop=[float(pc.stop_h) if pc.stop_h is not None else np.inf],
                    interval=float(pc.lockout_min) / 60.0,
                    cap=cap,
                    cap_window=1.0,
                )
            )
        notes = []
        for m in getattr(regimen, "modalities", ()):
            if getattr(m, "enabled", True) and not opts.pain.enable_assumed_modalities:
                notes.append(
                    f"modality {m.kind}: no published effect size; its assumed effect is OFF "
                    "(PainModel(enable_assumed_modalities=True) to switch it on)"
                )
        tmpl = [(si, e.time_h, get_drug(e.drug).name, e.route, e.duration_h) for si, e in ev0]
        rule = opts.combination if opts.combination is not None else outcome_posterior().rule
        if rule not in COMBINATION_RULES:
            raise ModelSpecError(f"combination must be one of {', '.join(COMBINATION_RULES)}, got {rule!r}")
        known_om = {f"outcome.{p.name}" for p in OUTCOME_PARAMETERS}
        bad_om = [
            c for c in population.columns if isinstance(c, str) and c.startswith("outcome.") and c not in known_om
        ]
        if bad_om:
            raise ModelSpecError(
                f"population columns {bad_om} name no outcome-model parameter (known: {', '.join(sorted(known_om))})"
            )
        plan = RegimenPlan(regimen, opts, blocks, off, float(t0), T, items, notes, tmpl, rule=rule)
        for it in items:
            plan._block_of(it["drug"])  # checks the drug is in the system
        return plan

    def rescue_shape(self) -> tuple[int, int, int, int]:
        """Static shape of the rescue tables: (items, rules per item, cap history length, lockout steps)."""
        items = self.items
        R = max([len(it["thr"]) for it in items], default=1)
        C = int(max([it["cap"] for it in items] + [1]))
        longest = max([it["interval"] for it in items] + [float(self.max_interval_h or 0.0), 1.0])
        M = int(max(1, np.ceil(longest / float(self.opts.dt_h) - 1e-9)))
        return max(len(items), 1), R, C, M

    def check_rescue_tables(self, tables: Mapping[str, np.ndarray], n_pat: int) -> dict:
        """Validate per-patient rescue tables (see :func:`simulate_regimen`); returns float arrays."""
        ref = self.rescue_tables(n_pat)
        if set(tables) != set(ref):
            raise ModelSpecError(f"rescue_tables must have the keys {sorted(ref)}, got {sorted(tables)}")
        out = {}
        for k, v in tables.items():
            v = np.asarray(v, float)
            if v.shape != ref[k].shape:
                raise ModelSpecError(f"rescue_tables[{k!r}] must have shape {ref[k].shape}, got {v.shape}")
            if np.isnan(v).any():
                raise ModelSpecError(f"rescue_tables[{k!r}] has NaN values")
            out[k] = v
        longest = self.rescue_shape()[3] * float(self.opts.dt_h)
        if np.any(out["prn_int"] > longest + 1e-9) or np.any(out["prn_int"] <= 0):
            raise ModelSpecError(f"rescue intervals must be in (0, {longest:g}] h (the regimen's longest)")
        if np.any(out["prn_dose"] < 0):
            raise ModelSpecError("rescue doses must be >= 0 mg")
        return out

    def rescue_tables(self, n_pat: int) -> dict:
        """The PRN/PCA rules as per-patient arrays (the kernel takes them as data, so rescue policies with
        the same structure share one compiled program): ``prn_thr`` (N, I, R) NRS thresholds (PCA: none),
        ``prn_dose`` (N, I, R) mg, ``prn_start``/``prn_stop`` (N, I, R) h, ``prn_int`` (N, I) minimum
        interval or lockout h, ``prn_cap`` (N, I) doses per window (0 = none), ``prn_capw`` (N, I) h."""
        ni, R, C, M = self.rescue_shape()
        thr = np.full((ni, R), np.inf)
        dosev = np.zeros((ni, R))
        start = np.full((ni, R), np.inf)
        stop = np.full((ni, R), -np.inf)
        for i, it in enumerate(self.items):
            m = len(it["thr"])
            thr[i, :m], dosev[i, :m] = (it["thr"] if it["kind"] == "prn" else [-1e9]), it["dose"]
            start[i, :m], stop[i, :m] = it["start"], it["stop"]
        interval = np.array([it["interval"] for it in self.items] or [1.0])
        cap = np.array([it["cap"] for it in self.items] or [0], float)
        capw = np.array([it["cap_window"] for it in self.items] or [1.0])

        def rep(v):
            return np.broadcast_to(v, (n_pat,) + v.shape).copy()

        return {
            "prn_thr": rep(thr),
            "prn_dose": rep(dosev),
            "prn_start": rep(start),
            "prn_stop": rep(stop),
            "prn_int": rep(interval),
            "prn_cap": rep(cap),
            "prn_capw": rep(capw),
        }

    def _block_of(self, name: str) -> _Block:
        for b in self.blocks:
            if b.drug.name == name:
                return b
        raise ModelSpecError(f"{name} is not in the regimen's drug set")

    def run_chunk(
        self,
        sub: pd.DataFrame,
        seed: int,
        weights: np.ndarray | None = None,
        rescue: Mapping[str, np.ndarray] | None = None,
    ) -> dict:
        import jax

        arrays, params, sched_rows, ids = self.arrays(sub, seed)
        if rescue is not None:
            arrays.update(rescue)
        if weights is not None:  # per-patient multipliers of the scheduled items
            ev_item, seg_item, n_sched = self.index
            wx = np.concatenate([weights, np.ones((len(sub), 1))], axis=1)
            arrays["evw"] = wx[:, np.where(ev_item >= 0, ev_item, n_sched)]
            arrays["segw"] = wx[:, np.where(seg_item >= 0, seg_item, n_sched)]
            sched_rows = [
                (si, t, d, r, a * (weights[:, si] if si >= 0 else 1.0), u) for (si, t, d, r, a, u) in sched_rows
            ]
        fn = self._compiled()
        # host arrays go to the kernel as they are: with several devices each device receives only its rows
        res = fn(jax.tree_util.tree_map(np.asarray, arrays))
        res = jax.tree_util.tree_map(np.asarray, res)
        res["sched"] = sched_rows
        res["ids"] = ids
        res["params"] = {
            b.drug.name: pd.DataFrame({k: np.asarray(v) for k, v in p.items() if not k.startswith("ETA_")})
            for b, p in zip(self.blocks, params)
        }
        return res

    def arrays(self, sub: pd.DataFrame, seed: int):
        """Host-side preparation of one chunk: (kernel arrays, PK parameters, scheduled doses, IDs).

        Runs with one BLAS thread (:func:`_one_blas_thread`)."""
        self._memo = {}
        try:
            with _one_blas_thread():
                return kernel_arrays(self, sub, seed)
        finally:
            self._memo = None

    def _compiled(self):
        sig = self._signature()
        if sig not in _KERNELS:
            if len(_KERNELS) > 16:
                _KERNELS.clear()
            _KERNELS[sig] = _make_kernel(self)
        return _KERNELS[sig]

    def _signature(self) -> tuple:
        """Everything the compiled kernel bakes in (:func:`.kernel.signature`)."""
        return signature(self)

    def outcome_defaults(self) -> dict[str, float]:
        """The outcome-model values of these options (:func:`.pd_arrays.outcome_defaults`)."""
        return outcome_defaults(self)

    def outcome_rows(self, sub: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per-row outcome-model values (:func:`.pd_arrays.outcome_rows`)."""
        return outcome_rows(self, sub)

    def collect(self, outs: list[dict], population: pd.DataFrame) -> PopulationResult:
        """The outcome table from the compiled program's per-patient summaries (:func:`.results.collect`)."""
        return collect(self, outs, population)
