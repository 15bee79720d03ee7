"""One-call simulation of a NONMEM-format dataset: ``pkpd.simulate(data, model, params)``.

The parameter file (TOML or JSON) gives every structural parameter of the model as a constant or an
expression of dataset columns, NONMEM ``$PK`` style, plus optional per-compartment dosing parameters::

    model = "1cmt_oral"          # optional; an explicit model argument wins
    interpolation = "nocb"       # optional: "nocb" (NONMEM, default) or "locf" for covariates
    solver = "auto"              # optional: "auto" (default), "analytic" or "ode"; an explicit argument wins
    ode_method = "kvaerno5"      # optional: "auto" (default), "tsit5", "dopri5", "dopri8" or "kvaerno5"

    [parameters]
    CL = "1.1*(WT/70)**0.75"     # L/h
    V = 20                       # L
    KA = 1.5                     # 1/h
    ALAG2 = "LAGT"               # h, lag of doses into CMT 2
    F2 = "BIOAV"                 # bioavailability of doses into CMT 2
    D2 = "DUR2"                  # h, modeled duration for RATE=-2 doses into CMT 2

``F<n>`` defaults to 1 and ``ALAG<n>`` to 0. ``R<n>``/``D<n>`` are needed only for RATE=-1/-2 doses into
compartment ``n``. Expressions are parsed safely by :mod:`pkpd.expr` (no ``eval``).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .data import frame_copy, frame_sha256, validate_dataset
from .errors import DatasetError, DatasetViolation, ModelSpecError, SolverError
from .expr import Expression, compile_parameter_block, evaluate_parameter_block, referenced_columns
from .models import CompartmentModel, get_model

__all__ = [
    "ParameterSpec",
    "load_params",
    "simulate",
    "prepare",
    "Prepared",
    "Simulator",
    "dense_grid",
    "plot_profiles",
    "profiles_figure",
    "MAX_PLOTTED_IDS",
    "simulate_dataset",
    "DatasetRun",
]

_DOSE_PREFIXES = ("F", "ALAG", "R", "D")


@dataclass(frozen=True)
class ParameterSpec:
    """Parameters as written by the user: ``{name: expression}`` plus options."""

    expressions: Mapping[str, Any]
    model: str | None = None
    interpolation: str = "nocb"
    source: str | None = None
    solver: str | None = None
    ode_method: str | None = None
    block: dict[str, Expression] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from .solvers import ODE_METHODS

        object.__setattr__(self, "block", compile_parameter_block(dict(self.expressions)))
        if self.interpolation not in ("nocb", "locf"):
            raise ModelSpecError(f"interpolation must be 'nocb' or 'locf', got {self.interpolation!r}")
        where = f" in {self.source}" if self.source else ""
        if self.solver is not None and str(self.solver).lower() not in ("auto", "analytic", "ode"):
            raise ModelSpecError(f"solver{where} must be 'auto', 'analytic' or 'ode', got {self.solver!r}")
        if self.ode_method is not None and str(self.ode_method).lower() not in ODE_METHODS:
            raise ModelSpecError(f"ode_method{where} must be one of {', '.join(ODE_METHODS)}, got {self.ode_method!r}")


def load_params(source: str | Path | Mapping[str, Any]) -> ParameterSpec:
    """Read a parameter file (``.toml`` or ``.json``) or a mapping into a :class:`ParameterSpec`.

    A mapping may be the whole file content (with a ``parameters`` table) or just ``{name: expression}``.
    """
    src_name = None
    if isinstance(source, (str, Path)):
        path = Path(source)
        src_name = str(path)
        if not path.is_file():
            raise ModelSpecError(f"parameter file {path} does not exist")
        text = path.read_text()
        try:
            content = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ModelSpecError(f"parameter file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    else:
        content = dict(source)
    if "parameters" in content:
        exprs = content["parameters"]
        # [drug]: read by the regimen simulator only (pkpd.drugs.with_structure), ignored here
        unknown = set(content) - {"parameters", "model", "interpolation", "solver", "ode_method", "structure", "drug"}
        if unknown:
            raise ModelSpecError(
                f"parameter file: unknown top-level keys {sorted(unknown)} "
                "(allowed: model, interpolation, solver, ode_method, parameters, structure, drug)"
            )
        if not isinstance(exprs, Mapping):
            raise ModelSpecError("parameter file: 'parameters' must be a table of name = value/expression")
        model_name = content.get("model")
        if "structure" in content:  # the model is written in the file itself (docs/model_language.md)
            from .models.user import compile_structure, register_user_model

            where = f"parameter file {src_name}" if src_name else "parameter file"
            um = register_user_model(
                compile_structure(
                    content["structure"],
                    name=Path(src_name).stem if src_name else None,
                    where=where,
                    text=text if src_name else None,
                    source=src_name,
                    known={str(k) for k in exprs},
                )
            )
            if model_name is not None and str(model_name) != um.name:
                raise ModelSpecError(
                    f"{where}: `model = {model_name!r}` names another model than its [structure] "
                    f"section ({um.name!r}); remove `model` or make them agree"
                )
            model_name = um.name
        return ParameterSpec(
            exprs,
            model_name,
            content.get("interpolation", "nocb"),
            src_name,
            content.get("solver"),
            content.get("ode_method"),
        )
    return ParameterSpec(content, None, "nocb", src_name)


@dataclass
class Prepared:
    """A dataset turned into padded arrays for the engine (see :func:`prepare`).

    The arrays may hold more pseudo-subjects than the dataset (``n_subjects``): :class:`Simulator` pads the
    batch to a size of :func:`pkpd.engine.bucket_size`'s ladder with copies of the first subject, so that
    nearby dataset sizes share one compiled program; ``row_map`` refers to the dataset's own subjects only.
    """

    model: CompartmentModel
    layout: Any
    rec: dict
    dose: dict
    ss: dict
    theta: dict
    frame: pd.DataFrame  # validated numeric frame, original order
    row_map: np.ndarray  # (n_rows, 2): (pseudo-subject, record slot) of each dataset row
    static_schedule: bool = False  # event times do not depend on parameters (no lags, fixed durations)
    n_subjects: int | None = None  # pseudo-subjects of the dataset (the first ones); None: all
    sched_cache: dict | None = field(default=None, repr=False)  # shared by the parameter sets of one design

    def schedule(self, solver) -> dict | None:
        """Precomputed event order for :func:`pkpd.engine.simulate_arrays` (``None`` if times are parametric).

        Computed once per solver kind and layout, for the distinct designs only (subjects with the same
        records share one schedule; :func:`pkpd.engine.compute_schedule_dedup`)."""
        if not self.static_schedule:
            return None
        from .engine import compute_schedule_dedup

        key = (type(solver).__name__, self.layout)
        if key not in self.sched_cache:
            self.sched_cache[key] = compute_schedule_dedup(
                self.model, self.layout, solver, self.rec, self.dose, self.ss, self.theta
            )
        return self.sched_cache[key]

    def __post_init__(self):
        if self.sched_cache is None:
            self.sched_cache = {}
        if self.n_subjects is None:
            self.n_subjects = int(self.rec["time"].shape[0])


def _check_param_names(model: CompartmentModel, spec: ParameterSpec) -> None:
    names = set(spec.block)
    missing = [p for p in model.param_names if p not in names]
    lines = getattr(model, "symbol_lines", None)
    if missing and lines:  # a user model: name the equation that uses the symbol
        where, eq = lines[missing[0]]
        src = f"model file {model.source}, {where}" if getattr(model, "source", None) else where
        raise ModelSpecError(
            f"{src}: equation {eq!r}: unknown symbol {missing[0]} (not a state, a defined quantity or a parameter "
            f"of the parameter file, which defines {', '.join(sorted(names)) or 'nothing'})"
        )
    if missing:
        raise ModelSpecError(
            f"model {model.name} needs parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(units: {', '.join(f'{p.name} [{p.unit}]' for p in model.params if p.name in missing)}); "
            f"the parameter file defines {', '.join(sorted(names)) or 'nothing'}"
        )
    allowed_dose = set(model.dose_params())
    for name in names - set(model.param_names):  # a structural parameter such as R0 (a baseline) is no dose
        for pre in _DOSE_PREFIXES:
            if name.startswith(pre) and name[len(pre) :].isdigit() and name not in allowed_dose:
                raise ModelSpecError(
                    f"parameter {name} refers to compartment {name[len(pre) :]}, which model {model.name} does "
                    f"not have ({model.compartment_table()})"
                )


_STANDARD = {"TIME", "AMT", "ID", "EVID", "CMT", "RATE", "II", "ADDL", "SS", "DV", "MDV"}


def _validate(data, model: CompartmentModel, spec: ParameterSpec | None, source: str | None = None) -> pd.DataFrame:
    """The validated numeric frame (:func:`pkpd.data.validate_dataset`); with ``spec=None`` the checks that
    depend on the parameter file are left for :meth:`_Design.bind`. ``source``: the file, for messages."""
    forbidden = [model.forcing_cmt + 1] if model.forcing_cmt is not None else []
    block = spec.block if spec is not None else None
    df = validate_dataset(
        data,
        n_compartments=model.n_cmt,
        compartment_names=model.compartments,
        parameter_names=set(block) if block is not None else None,
        required_covariates=(referenced_columns(block) - _STANDARD) if block is not None else (),
        rate_compartments_forbidden=forbidden,
        model_name=model.name,
    )
    dose_states = getattr(model, "dose_states", None)
    if dose_states is not None and len(dose_states) < model.n_cmt:  # a user model's `doses` list
        evid, amt, cmt = (df[c].to_numpy(float) for c in ("EVID", "AMT", "CMT"))
        is_dose = np.isin(evid, (1, 4)) & ((amt > 0) | (df["RATE"].to_numpy(float) != 0))
        bad = is_dose & ~np.isin(cmt - 1, dose_states)
        if bad.any():
            ok = ", ".join(f"{i + 1}={model.compartments[i]}" for i in dose_states)
            raise DatasetError(
                [
                    DatasetViolation(
                        tuple(int(r) + 1 for r in np.nonzero(bad)[0]),
                        "CMT",
                        f"dose into a state that model {model.name} does not dose (its `doses`: {ok})",
                    )
                ],
                source=source or (str(data) if isinstance(data, (str, Path)) else None),
            )
    return df


class _Design:
    """Everything of a validated dataset that does not depend on the parameters: the pseudo-subjects, the
    padded record, dose and steady-state arrays (numpy, vectorized over rows), and the schedule cache.

    ``pad=True`` pads the subjects to :func:`pkpd.engine.bucket_size` with copies of the first subject."""

    def __init__(self, df: pd.DataFrame, model: CompartmentModel, source: str | None = None, pad: bool = False):
        from .engine import bucket_size

        self.model, self.frame, self.source = model, df, source
        n_rows = len(df)
        self.base: pd.DataFrame | None = None  # the output's input columns (set by Simulator)
        self.data_rows = np.arange(1, n_rows + 1)  # 1-based data row of the file each row is or copies
        self.n_rows = n_rows
        self.ident = ident = df["ID"].to_numpy()
        self.time = time = df["TIME"].to_numpy(float)
        self.evid = evid = df["EVID"].to_numpy(float).astype(int)
        self.amt = amt = df["AMT"].to_numpy(float)
        self.cmt = cmt = df["CMT"].to_numpy(float).astype(int)
        self.rate = rate = df["RATE"].to_numpy(float)
        self.ii = ii = df["II"].to_numpy(float)
        addl = df["ADDL"].to_numpy(float).astype(int)
        self.ssc = ssc = df["SS"].to_numpy(float).astype(int)
        self.is_dose = is_dose = np.isin(evid, (1, 4))
        self.const_inf = const_inf = is_dose & (ssc == 1) & (amt == 0) & (rate > 0) & (ii == 0)
        reset = (evid == 3) | (evid == 4) | (is_dose & (ssc == 1))

        # --- pseudo-subjects: an ID block, split where TIME decreases at a reset ---
        new_subj = np.ones(n_rows, bool)
        new_subj[1:] = (ident[1:] != ident[:-1]) | (time[1:] < time[:-1])
        self.starts = starts = np.nonzero(new_subj)[0]
        ends = np.append(starts[1:], n_rows)
        self.sid = sid = np.cumsum(new_subj) - 1  # pseudo-subject of each row
        pos = np.arange(n_rows) - starts[sid]  # record slot within it
        self.N = N = len(starts)
        self.B = B = bucket_size(N) if pad else N
        R = int((ends - starts).max())
        dosing = is_dose & ~const_inf
        n_dose_row = np.where(dosing, addl + 1, 0)
        D = max(1, int(np.bincount(sid, weights=n_dose_row, minlength=N).max()))
        ss_row = is_dose & (ssc > 0)
        P_ss = int(np.bincount(sid, weights=ss_row, minlength=N).max())
        n = model.n_cmt
        self.S = max([1] + [len(r) for r in model.routes.values()])
        self.dose_cmt0 = dose_cmt0 = np.clip(cmt - 1, 0, n - 1)
        self.has_inf = bool(np.any(is_dose & (rate != 0) & ~const_inf)) or any(
            rt.mode == "zero_order" for rs in model.routes.values() for rt in rs
        )
        self.R, self.D, self.P_ss = R, D, P_ss

        # --- padded record arrays: slot j of subject s holds row starts[s] + min(j, m_s - 1) ---
        m_s = ends - starts
        subj = np.concatenate([np.arange(N), np.zeros(B - N, int)])  # padding subjects copy subject 0
        jj = np.arange(R)[None, :]
        self.src_row = src_row = starts[subj][:, None] + np.minimum(jj, m_s[subj][:, None] - 1)  # (B, R)
        valid = jj < m_s[subj][:, None]
        # epochs: a reset record starts a new epoch; doses of an epoch are dropped after the next reset
        new_ep = reset | new_subj
        eid = np.cumsum(new_ep) - 1
        ep_start = np.nonzero(new_ep)[0]
        ep_end = np.append(ep_start[1:], n_rows)
        ep_last = time[ep_end - 1]
        nxt_is_reset = np.append(~new_subj[ep_end[:-1]], False)  # the next epoch starts with a reset of this subject
        ep_next = np.where(nxt_is_reset, time[np.minimum(ep_end, n_rows - 1)], np.inf)
        # the record's own dose slot and the dose list (record's own dose then its ADDL copies)
        cum = np.cumsum(n_dose_row)
        first_slot = cum - n_dose_row - (cum - n_dose_row)[starts][sid]  # slot of the k=0 dose within the subject
        dose0 = np.where(dosing, first_slot, -1).astype(np.int32)
        rows_rep = np.repeat(np.arange(n_rows), n_dose_row)
        k_rep = np.arange(rows_rep.size) - np.repeat(cum - n_dose_row, n_dose_row)
        dose = {"src": np.zeros((N, D), np.int32), "time": np.zeros((N, D)), "valid": np.zeros((N, D), bool)}
        ds, dslot = sid[rows_rep], first_slot[rows_rep] + k_rep
        dose["src"][ds, dslot] = pos[rows_rep]
        dose["time"][ds, dslot] = time[rows_rep] + k_rep * ii[rows_rep]
        dose["valid"][ds, dslot] = True
        ss = {"src": np.zeros((N, max(P_ss, 1)), np.int32), "valid": np.zeros((N, max(P_ss, 1)), bool)}
        ss_cum = np.cumsum(ss_row)
        ss_slot = ss_cum - 1 - (ss_cum - ss_row)[starts][sid]
        ss["src"][sid[ss_row], ss_slot[ss_row]] = pos[ss_row]
        ss["valid"][sid[ss_row], ss_slot[ss_row]] = True
        self.dose = {k: v[subj] for k, v in dose.items()} if B > N else dose
        self.ss = {k: v[subj] for k, v in ss.items()} if B > N else ss
        self.rec = {
            "time": time[src_row],
            "valid": valid,
            "cmt": dose_cmt0[src_row].astype(np.int32),
            "amt": (amt * is_dose)[src_row],
            "rate": (rate * is_dose)[src_row],
            "ii": ii[src_row],
            "reset": reset[src_row] & valid,
            "next_reset": ep_next[eid][src_row],
            "epoch_last": ep_last[eid][src_row],
            "dose0": np.where(valid, dose0[src_row], -1).astype(np.int32),
        }
        self.row_map = np.stack([sid, pos], axis=1)
        self.sched_cache: dict = {}
        self._bound: dict = {}

    def bind(self, spec: ParameterSpec, interp: str, check_columns: bool, host_theta: bool = False) -> Prepared:
        """The design with one parameter set: parameter values checked on every row (host, numpy), the
        layout, and the engine's parameter arrays: evaluated in JAX, so that gradients flow from expressions
        to predictions, or with ``host_theta`` the host's numpy values (no JAX operation, so a new parameter
        set never compiles anything; the values agree with JAX's to rounding). ``check_columns``: also run
        the dataset checks that depend on the parameter file (the columns it references, ``R<n>``/``D<n>``),
        once per set of parameter names."""
        import jax.numpy as jnp

        from .data import _parameter_violations
        from .engine import Layout

        model = self.model
        block = spec.block
        cov_needed = referenced_columns(block)
        if check_columns:
            key = (frozenset(block), frozenset(cov_needed))
            if key not in self._bound:
                forbidden = [model.forcing_cmt + 1] if model.forcing_cmt is not None else []
                std = {c: self.frame[c].to_numpy(float) for c in ("CMT", "RATE", "EVID")}
                bad = _parameter_violations(
                    self.frame,
                    std,
                    n_compartments=model.n_cmt,
                    parameter_names=set(block),
                    required_covariates=cov_needed - _STANDARD,
                    rate_compartments_forbidden=forbidden,
                )
                if bad:
                    raise DatasetError(bad, source=self.source)
                self._bound[key] = True
        n_rows = self.n_rows
        columns = {c: self.frame[c].to_numpy(float) for c in cov_needed if c in self.frame.columns}
        host = evaluate_parameter_block(block, columns, xp=np)
        host = {k: np.broadcast_to(np.asarray(v, float), (n_rows,)) for k, v in host.items()}
        violations = _check_param_values(
            model, host, self.is_dose, self.ssc, self.rate, self.ii, self.cmt, self.amt, self.const_inf
        )
        if violations:
            raise DatasetError(violations, source=spec.source or self.source)
        M = _n_overlap(model, host, self)
        starts, sid = self.starts, self.sid
        tv = any(np.any(v != v[starts][sid]) for v in columns.values())
        lay = Layout(
            n_rec=self.R,
            n_dose=self.D,
            n_ss=self.P_ss,
            n_route=self.S,
            n_overlap=M,
            has_infusion=self.has_inf,
            time_varying=tv,
            locf=(interp == "locf"),
        )
        if host_theta:  # constant parameters within subjects: one record column, broadcast inside the kernel
            cols_idx = self.src_row if tv else self.src_row[:, :1]
            theta = arrange_theta(model, {k: v[cols_idx] for k, v in host.items()}, cols_idx.shape, xp=np)
        else:
            jcols = {c: jnp.asarray(v[self.src_row]) for c, v in columns.items()}
            if "TIME" in cov_needed:
                jcols["TIME"] = jnp.asarray(self.rec["time"])
            theta = theta_from_columns(model, block, jcols, self.src_row.shape)
        names = set(block)
        timed = [q for q in names if q.startswith("ALAG") and q[4:].isdigit()]
        if self.has_inf:
            timed += [q for q in names if q[:1] in ("F", "D", "R") and q[1:].isdigit()]
            timed += [rt.duration for rs in model.routes.values() for rt in rs if rt.duration]
        return Prepared(
            model,
            lay,
            self.rec,
            self.dose,
            self.ss,
            theta,
            self.frame,
            self.row_map,
            static_schedule=not timed,
            n_subjects=self.N,
            sched_cache=self.sched_cache,
        )


def prepare(data, model: str | CompartmentModel, params, *, interpolation: str | None = None) -> Prepared:
    """Validate ``data`` against ``model`` and ``params`` and build the engine's padded arrays."""
    spec = params if isinstance(params, ParameterSpec) else load_params(params)
    model = get_model(model) if isinstance(model, str) else model
    _check_param_names(model, spec)
    source = str(data) if isinstance(data, (str, Path)) else None
    df = _validate(data, model, spec)
    return _Design(df, model, source).bind(spec, interpolation or spec.interpolation, check_columns=False)


def theta_from_columns(model: CompartmentModel, block, columns, shape):
    """Evaluate the parameter block in JAX and arrange it as the engine expects."""
    import jax.numpy as jnp

    return arrange_theta(model, evaluate_parameter_block(block, columns, xp=jnp), shape)


def arrange_theta(model: CompartmentModel, vals, shape, xp=None):
    """Engine parameter dict from named values (each broadcastable to ``shape``): structural parameters
    ``p``, route fractions/durations, and per-compartment ``F``, ``ALAG``, ``R``, ``D`` (defaults 1, 0, 1, 1).
    ``xp``: the array namespace (default ``jax.numpy``; ``numpy`` keeps everything on the host)."""
    if xp is None:
        import jax.numpy as jnp
    else:
        jnp = xp

    vals = {k: jnp.broadcast_to(jnp.asarray(v, dtype=float), shape) for k, v in vals.items()}
    n = model.n_cmt
    p = {name: vals[name] for name in model.param_names}
    for rs in model.routes.values():
        for rt in rs:
            for extra in (rt.fraction, rt.duration):
                if extra and extra not in p:
                    p[extra] = vals[extra]

    def per_cmt(prefix, default):
        return jnp.stack([vals.get(f"{prefix}{i + 1}", jnp.full(shape, default)) for i in range(n)], axis=-1)

    return {
        "p": p,
        "F": per_cmt("F", 1.0),
        "ALAG": per_cmt("ALAG", 0.0),
        "R": per_cmt("R", 1.0),
        "D": per_cmt("D", 1.0),
    }


def _per_cmt(host, prefix, c0, n_cmt, default):
    """Per row: the value of parameter ``<prefix><c0+1>`` on that row (``default`` where it is not defined)."""
    out = np.full(c0.shape, default, float)
    for c in range(n_cmt):
        name = f"{prefix}{c + 1}"
        if name in host:
            sel = c0 == c
            out[sel] = host[name][sel]
    return out


def _route_max(model, host, n_rows, what):
    """Per row: the largest lag (``what="lag"``) or modeled duration (``"dur"``) over the model's dose routes
    (0 where the model has none)."""
    out = np.zeros(n_rows)
    for rs in model.routes.values():
        for rt in rs:
            if what == "lag":
                name = f"ALAG{rt.target + 1}"
                if name in host:
                    out = np.maximum(out, host[name])
            elif rt.duration:
                out = np.maximum(out, host[rt.duration])
    return out


def _n_overlap(model, host, design) -> int:
    """Past infusions that can still run at a steady-state record: ``ceil((lag + duration) / II) + 1`` at
    most, over the steady-state dose rows (vectorized), at least 1."""
    sel = design.is_dose & (design.ssc > 0) & ~design.const_inf
    if not sel.any():
        return 1
    c0 = design.dose_cmt0
    n = model.n_cmt
    amt, rate = design.amt, design.rate
    with np.errstate(divide="ignore", invalid="ignore"):
        F = _per_cmt(host, "F", c0, n, 1.0)
        fa = F * amt
        dur = np.where(rate > 0, fa / np.where(rate > 0, rate, 1.0), 0.0)
        dur = np.where(rate == -1, fa / _per_cmt(host, "R", c0, n, 1.0), dur)
        dur = np.where(rate == -2, _per_cmt(host, "D", c0, n, 0.0), dur)
        lag = np.maximum(_per_cmt(host, "ALAG", c0, n, 0.0), _route_max(model, host, len(amt), "lag"))
        dur = np.maximum(dur, _route_max(model, host, len(amt), "dur"))
        m = np.ceil((lag[sel] + dur[sel]) / design.ii[sel]) + 1
    return max(1, int(m.max()))


def _check_param_values(model, host, is_dose, ssc, rate, ii, cmt, amt, const_inf) -> list[DatasetViolation]:
    out: list[DatasetViolation] = []

    def rows(mask):
        return tuple(int(r) + 1 for r in np.nonzero(mask)[0])

    for q in model.params:
        v = host[q.name]
        bad = ~np.isfinite(v)
        if bad.any():
            out.append(DatasetViolation(rows(bad), None, f"parameter {q.name} is not a finite number"))
        low = (
            np.isfinite(v) & (v <= q.lower)
            if q.name not in ("FR", "FZO", "FM")
            else np.isfinite(v) & ((v < 0) | (v > 1))
        )
        if low.any():
            what = "in [0, 1]" if q.name in ("FR", "FZO", "FM") else f"> {q.lower:g}"
            out.append(
                DatasetViolation(
                    rows(low),
                    None,
                    f"parameter {q.name} [{q.unit}] must be {what}; got "
                    f"{', '.join(f'{x:g}' for x in np.unique(v[low])[:5])}",
                )
            )
    c0 = np.clip(cmt - 1, 0, model.n_cmt - 1)
    for name, v in host.items():
        for pre, cond, what in (("F", lambda x: x < 0, ">= 0"), ("ALAG", lambda x: x < 0, ">= 0")):
            if name.startswith(pre) and name[len(pre) :].isdigit():
                bad = cond(v) | ~np.isfinite(v)
                if bad.any():
                    out.append(DatasetViolation(rows(bad), None, f"parameter {name} must be {what} and finite"))
    for i_cmt in range(model.n_cmt):
        for pre, code in (("R", -1), ("D", -2)):
            name = f"{pre}{i_cmt + 1}"
            if name in host:
                use = is_dose & (rate == code) & (c0 == i_cmt)
                bad = use & ~(host[name] > 0)
                if bad.any():
                    out.append(DatasetViolation(rows(bad), None, f"parameter {name} must be > 0 on RATE={code} doses"))
    # steady state with a lag of at least one interval is ambiguous (pending past doses): refuse clearly
    ssrows = is_dose & (ssc > 0) & ~const_inf
    if ssrows.any():
        lag = np.maximum(_per_cmt(host, "ALAG", c0, model.n_cmt, 0.0), _route_max(model, host, len(amt), "lag"))
        for i in np.nonzero(ssrows & (lag >= ii))[0]:  # only the offending rows, for their messages
            out.append(
                DatasetViolation(
                    (int(i) + 1,),
                    "II",
                    f"steady-state dose with lag time {lag[i]:g} h >= II {ii[i]:g} h is not supported",
                )
            )
    if model.forcing_cmt is not None and np.any(is_dose & (ssc > 0)):
        out.append(
            DatasetViolation(
                rows(is_dose & (ssc > 0)), "SS", f"steady state is not available for the Weibull input of {model.name}"
            )
        )
    return out


def _solve_checked(
    prep: Prepared, solver, subset: np.ndarray | None = None, check: bool | str = True
) -> tuple[np.ndarray, np.ndarray]:
    """Amounts (N, n_rec, n_cmt) and a per-pseudo-subject failure flag (N,) of one solve with its checks
    (:func:`pkpd.engine.simulate_arrays` with ``check``, then :func:`_amount_flags`); with ``subset``
    (pseudo-subject indices) only those subjects are solved, in a batch padded to
    :func:`pkpd.engine.bucket_size` (so that a retry of a few subjects compiles once per bucket). Padding
    subjects of ``prep`` are dropped: N is ``prep.n_subjects`` (or the subset's size). The amounts may be a
    read-only view."""
    import jax

    from .engine import bucket_size, simulate_arrays

    arrays = (prep.rec, prep.dose, prep.ss, prep.theta)
    sched = prep.schedule(solver)
    if subset is None:
        n_out = prep.n_subjects
    else:
        sel = np.asarray(subset)
        n_out = len(sel)
        sel = np.concatenate([sel, np.repeat(sel[:1], bucket_size(n_out) - n_out)])
        arrays = jax.tree_util.tree_map(lambda v: v[sel], arrays)
        if sched is not None:
            sched = jax.tree_util.tree_map(lambda v: v[sel], sched)
    amounts, ok = simulate_arrays(prep.model, prep.layout, solver, *arrays, sched, check=check)
    amounts = np.asarray(jax.device_get(amounts))[:n_out]
    bad = ~np.asarray(ok)[:n_out] | _amount_flags(prep, amounts, solver, subset)
    return amounts, bad


def _amount_flags(prep: Prepared, amounts: np.ndarray, solver, subset=None) -> np.ndarray:
    """Per-subject flags: a non-finite amount, an amount below roundoff (``-1.1e-11 * max|amount| - atol``),
    or (built-in models, subjects without steady-state records) more amount in the body than the
    bioavailable dose given so far, beyond 1e-10 of it. ``amounts`` (N, n_rec, n_cmt) are those of the
    first N subjects of ``prep`` or of ``subset``."""
    from .engine import _check_tolerances, bucket_size
    from .models.registry import BUILTIN_NAME as _NAME

    N = amounts.shape[0]
    # padding slots repeat a subject's last record, so whole arrays can be reduced without masks
    flat = amounts.reshape(N, -1)
    bad = ~np.isfinite(flat).all(axis=1)
    A = amounts if not bad.any() else np.where(np.isfinite(amounts), amounts, 0.0)
    _, ab = _check_tolerances(amounts.dtype)
    model = prep.model
    conc = {o.index for o in model.outputs if o.divide_by is None}  # effect-site states hold concentrations
    if model.forcing_cmt is not None:
        conc.add(model.forcing_cmt)
    mass_idx = [i for i in range(model.n_cmt) if i not in conc]
    flatA = A.reshape(N, -1)
    scale = np.abs(flatA).max(axis=1)
    atol = getattr(solver, "atol", 0.0)
    bad |= flatA.min(axis=1) < -(ab * scale + atol)
    if _NAME.match(model.name) and mass_idx:
        if subset is None:  # the whole (padded) batch: gathers keep the compiled shapes of the batch
            idx = np.arange(prep.rec["time"].shape[0])
        else:
            sel = np.asarray(subset)
            idx = np.concatenate([sel, np.repeat(sel[:1], bucket_size(len(sel)) - len(sel))])
        src = prep.dose["src"][idx]
        rows = idx[:, None]
        cmt = prep.rec["cmt"][rows, src]
        F = _dose_F(prep, rows, src, cmt)[:N]
        src, rows, cmt = src[:N], rows[:N], cmt[:N]
        d_amt = prep.rec["amt"][rows, src] * np.maximum(F, 0.0)
        d_amt = np.where(prep.dose["valid"][idx[:N]], d_amt, 0.0)  # (N, D) bioavailable amount of each dose
        given = _given_by(prep.dose["time"][idx[:N]], d_amt, prep.rec["time"][idx[:N]])
        in_body = A[..., mass_idx[0]] if len(mass_idx) == 1 else A[..., mass_idx].sum(axis=2)
        has_ss = prep.ss["valid"][idx[:N]].any(axis=1)
        over = (in_body - given * (1.0 + 1e-10)).max(axis=1) > ab * scale
        bad |= over & ~has_ss
    return bad


def _dose_F(prep: Prepared, rows, src, cmt) -> np.ndarray:
    """Bioavailability of each dose: ``theta["F"]`` at the dose's subject, source record and compartment
    (one gather on the device instead of copying the whole (N, n_rec, n_cmt) array to the host)."""
    import jax.numpy as jnp

    F = prep.theta["F"]
    if F.shape[1] == 1:  # parameters constant within subjects (:meth:`_Design.bind`)
        src = np.zeros_like(src)
    if isinstance(F, np.ndarray):
        return F[rows, src, cmt]
    return np.asarray(jnp.asarray(F)[jnp.asarray(rows), jnp.asarray(src), jnp.asarray(cmt)])


def _given_by(dose_t: np.ndarray, d_amt: np.ndarray, rec_t: np.ndarray) -> np.ndarray:
    """``given[s, r] = sum_d d_amt[s, d] * (dose_t[s, d] <= rec_t[s, r])`` (N, R) without forming the
    (N, R, D) comparison: one pass per dose slot for few slots, else the doses sorted by time per subject,
    their cumulative amounts, and for every record (times non-decreasing within a subject) the number of
    doses at or before it, read from one stable sort of both lists."""
    N, D = dose_t.shape
    if D <= 32:
        given = np.zeros(rec_t.shape)
        for d in range(D):
            given += d_amt[:, d, None] * (dose_t[:, d, None] <= rec_t)
        return given
    R = rec_t.shape[1]
    order = np.argsort(dose_t, axis=1, kind="stable")
    t_s = np.take_along_axis(dose_t, order, axis=1)
    cum = np.concatenate([np.zeros((N, 1)), np.cumsum(np.take_along_axis(d_amt, order, axis=1), axis=1)], axis=1)
    srt = np.argsort(np.concatenate([t_s, rec_t], axis=1), axis=1, kind="stable")  # doses first at ties
    p = np.nonzero(srt >= D)[1].reshape(N, R)  # sorted positions of the records, in record order
    return np.take_along_axis(cum, p - np.arange(R), axis=1)


def _failure_message(prep: Prepared, bad: np.ndarray, solver, fallback) -> str:
    """One message naming the failed subjects and what to do."""
    from .solvers._solvers import Analytic

    first = np.zeros(len(bad), int)
    first[prep.row_map[::-1, 0]] = np.arange(len(prep.row_map))[::-1]
    ids = pd.unique(prep.frame["ID"].to_numpy()[first[np.nonzero(bad)[0]]])
    shown = ", ".join(f"{v:g}" if isinstance(v, (float, np.floating)) else str(v) for v in ids[:10])
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    who = f"{int(bad.sum())} subject(s) (ID {shown}{more})"
    what = "an amount negative beyond roundoff, more amount in the body than was dosed, or a non-finite state"
    if isinstance(solver, Analytic) and fallback is None:
        return (
            f"the exact solver cannot vouch for its result for {who}: its rounding-error estimate exceeds "
            f"1.5e-9 relative (widely separated rate constants), or {what}. Use solver 'auto' (re-solves "
            "them with a stiff ODE solver; CLI --solver auto) or solver 'ode' with ode_method 'kvaerno5'."
        )
    used = fallback if fallback is not None else solver
    tried = (
        f" and the stiff retry (ODE method {fallback.method}, rtol {fallback.rtol:g}, atol {fallback.atol:g})"
        if fallback is not None
        else ""
    )
    return (
        f"the {'exact solver' if isinstance(solver, Analytic) else f'ODE solver (method {solver.method})'}"
        f"{tried} failed for {who}: step limit reached (max_steps {used.max_steps}), {what}. Try ode_method "
        "'kvaerno5' (CLI --ode-method kvaerno5) or solver=ODE(method='kvaerno5', max_steps=...), or check the "
        "parameters."
    )


def _resolve_model(model, spec: ParameterSpec | None) -> CompartmentModel:
    model = model or (spec.model if spec is not None else None)
    if model is None:
        raise ModelSpecError("no model given: pass a model name or set `model = ...` in the parameter file")
    return get_model(model) if isinstance(model, str) else model


class Simulator:
    """One dataset design simulated with many parameter sets: validation, event expansion and the event
    schedule are done once, each call only evaluates the parameters and runs the compiled kernel.

    ``pkpd.simulate(data, model, params)`` is ``Simulator(data, model, params)(params)``; keep the object to
    re-simulate the same records (doses, observation times, covariates) with other parameters, as visual
    predictive checks, parameter sweeps and optimizers do.

    Parameters
    ----------
    data
        Path to a CSV file or a :class:`pandas.DataFrame` with NONMEM columns, as for :func:`simulate`
        (TIME and II in h, AMT in mg, RATE in mg/h for the built-in models). It is read and validated here,
        once; later changes to the DataFrame are not seen.
    model
        Built-in model name or a model object; ``None``: the ``model`` entry of ``params``.
    params
        Optional default parameter set (file path, mapping or :class:`ParameterSpec`). Given here, the
        dataset checks that depend on it run now (the same errors as :func:`simulate`); otherwise they run
        at the first call with each set of parameter names.
    solver, interpolation, ode_method
        Defaults for the calls, as for :func:`simulate`.
    grid, ignore, accept
        As for :func:`simulate`: output grid times (h) added to every subject, and NONMEM IGNORE/ACCEPT
        record filters (:func:`pkpd.data.filter_records`), applied once here.

    Notes
    -----
    Calls reuse the prepared design (padded record and dose arrays, the event schedule per solver kind)
    and the compiled programs: the batch is padded to a size of :func:`pkpd.engine.bucket_size`'s ladder
    (steps of at most 1.25x) with copies of the first subject, dropped from the output, so datasets of
    nearby sizes share one program too. A new parameter set with the same parameter names and layout
    compiles nothing.

    Examples
    --------
    >>> import pandas as pd, pkpd
    >>> df = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 1.0], "AMT": [100.0, 0.0], "CMT": [1, 1], "EVID": [1, 0]})
    >>> sim = pkpd.Simulator(df, "1cmt_iv")
    >>> [round(float(sim({"CL": cl, "V": 50.0})["CP"].iloc[1]), 6) for cl in (5.0, 10.0)]  # mg/L
    [1.809675, 1.637462]
    """

    def __init__(
        self,
        data,
        model: str | CompartmentModel | None = None,
        params=None,
        *,
        solver=None,
        interpolation: str | None = None,
        ode_method: str | None = None,
        grid=None,
        ignore=None,
        accept=None,
    ):
        from .data import filter_records, parse_grid, read_dataset, renumber

        spec = None if params is None else (params if isinstance(params, ParameterSpec) else load_params(params))
        self.model = _resolve_model(model, spec)
        if spec is not None:
            _check_param_names(self.model, spec)
        self.params = spec
        self.solver, self.interpolation, self.ode_method = solver, interpolation, ode_method
        self.grid = None if grid is None else parse_grid(grid)  # a bad grid is reported before the data is read
        source = str(data) if isinstance(data, (str, Path)) else None
        if isinstance(data, pd.DataFrame):
            raw = frame_copy(data.reset_index(drop=True))
        elif isinstance(data, (str, Path)):  # the file's own cells, as text: predictions are appended to them
            raw = read_dataset(data)
        else:
            raise TypeError(f"expected a pandas DataFrame or a path, got {type(data).__name__}")
        kept = filter_records(raw, ignore, accept, source=source)
        #: What IGNORE/ACCEPT and the comment column ``C`` dropped (:class:`pkpd.data.FilteredRecords`).
        self.filtered = kept
        try:
            df = _validate(kept.frame, self.model, spec, source=source)
        except DatasetError as exc:  # row numbers of the file, not of the rows kept
            raise renumber(exc, kept.rows, source) from None
        self._source, self._frame, self._base, self._rows = source, df, kept.frame, kept.rows
        self._designs: dict = {}
        default = interpolation or (spec.interpolation if spec is not None else None) or "nocb"
        self._design = self._design_for(default)

    def _design_for(self, interp: str) -> _Design:
        """The prepared design (with the grid rows, whose covariates depend on the interpolation)."""
        from .data import add_grid

        key = interp if self.grid is not None else None
        design = self._designs.get(key)
        if design is None:
            if self.grid is None:
                frame, base, rows = self._frame, self._base, self._rows
            else:
                g = add_grid(self._frame, self.grid, interpolation=interp, base=self._base)
                frame, base, rows = g.frame, g.base, self._rows[g.source]
            design = _Design(frame, self.model, self._source, pad=True)
            design.base, design.data_rows = base, rows
            if self.params is not None:  # the constructor checked the columns the parameter file needs
                spec = self.params
                design._bound[(frozenset(spec.block), frozenset(referenced_columns(spec.block)))] = True
            self._designs[key] = design
        return design

    @property
    def n_subjects(self) -> int:
        """Pseudo-subjects of the dataset (an ID's records, split at a reset that goes back in time)."""
        return self._design.N

    @property
    def batch_size(self) -> int:
        """Subjects per compiled batch: :attr:`n_subjects` rounded up to :func:`pkpd.engine.bucket_size`."""
        return self._design.B

    def _bind(self, spec: ParameterSpec, interp: str, **kw) -> tuple[_Design, Prepared]:
        from .data import renumber

        design = self._design_for(interp)
        try:
            return design, design.bind(spec, interp, check_columns=True, **kw)
        except DatasetError as exc:
            raise renumber(exc, design.data_rows) from None

    def prepare(self, params=None, *, interpolation: str | None = None) -> Prepared:
        """The design bound to one parameter set: :class:`Prepared` arrays (padded to :attr:`batch_size`)."""
        spec = self._spec(params)
        return self._bind(spec, interpolation or self.interpolation or spec.interpolation)[1]

    def _spec(self, params) -> ParameterSpec:
        if params is None:
            if self.params is None:
                raise ModelSpecError("a parameter file or mapping is required")
            return self.params
        spec = params if isinstance(params, ParameterSpec) else load_params(params)
        _check_param_names(self.model, spec)
        return spec

    def __call__(
        self, params=None, *, solver=None, interpolation: str | None = None, ode_method: str | None = None
    ) -> pd.DataFrame:
        """Simulate every record with one parameter set.

        Parameters
        ----------
        params
            Parameter file path (TOML/JSON), mapping or :class:`ParameterSpec`, as for :func:`simulate`
            (units of the model's parameters: L/h, L, 1/h...); ``None``: the set given to the constructor.
        solver, interpolation, ode_method
            As for :func:`simulate`; default: the constructor's, then the parameter file's.

        Returns
        -------
        pandas.DataFrame
            As :func:`simulate`: every input row and column, then the amounts (mg) per compartment and the
            concentrations (``CP``, mg/L, and the model's extra outputs).

        Raises
        ------
        DatasetError, ModelSpecError, SolverError
            As :func:`simulate`.
        """
        from .solvers import resolve_solver

        spec = self._spec(params)
        solver = solver if solver is not None else self.solver
        solver = solver if solver is not None else (spec.solver or "auto")
        method = ode_method if ode_method is not None else self.ode_method
        solv = resolve_solver(solver, self.model, method if method is not None else spec.ode_method)
        design, prep = self._bind(spec, interpolation or self.interpolation or spec.interpolation, host_theta=True)
        amounts, n_stiff = _solve_all(prep, solver, solv)
        out = _finish(design.base, prep, amounts)
        # pseudo-subjects re-solved with the stiff fallback (the CLI says so next to the solver it names)
        out.attrs["stiff_resolved"] = int(n_stiff)
        # rows dropped by IGNORE/ACCEPT or the comment column C (the CLI says how many and why)
        out.attrs["ignored_rows"] = int(self.filtered.n_dropped)
        if self.filtered.dropped:
            out.attrs["ignored"] = self.filtered.message()
        return out


def _solve_all(prep: Prepared, solver, solv) -> tuple[np.ndarray, int]:
    """Amounts (N, n_rec, n_cmt) of every pseudo-subject, checked; failed subjects re-solved or reported.
    Also returns how many pseudo-subjects the stiff fallback re-solved."""
    from .solvers._solvers import Analytic, Auto, stiff_fallback

    amounts, bad = _solve_checked(prep, solv)
    if bad.any():
        amounts = amounts.copy()
    if bad.any() and isinstance(solv, Analytic):  # the screen's stiff subjects: check them entry by entry
        idx = np.nonzero(bad)[0]
        sub_amounts, sub_bad = _solve_checked(prep, solv, idx, check="full")
        amounts[idx] = sub_amounts
        bad[idx] = sub_bad
    if bad.any():
        auto = isinstance(solver, Auto) or (isinstance(solver, str) and solver.lower() == "auto")
        fb = stiff_fallback(solv) if (auto or not isinstance(solv, Analytic)) else None
        if fb is not None:
            idx = np.nonzero(bad)[0]
            sub_amounts, sub_bad = _solve_checked(prep, fb, idx)
            amounts[idx] = sub_amounts
            bad[idx] = sub_bad
            if bad.any():
                raise SolverError(_failure_message(prep, bad, solv, fb))
            return amounts, len(idx)
        raise SolverError(_failure_message(prep, bad, solv, None))
    return amounts, 0


def _finish(base: pd.DataFrame, prep: Prepared, amounts: np.ndarray) -> pd.DataFrame:
    """The output frame: a copy of ``base`` (the input rows) with amounts and concentrations appended."""
    model_obj = prep.model
    rm0, rm1 = prep.row_map[:, 0], prep.row_map[:, 1]
    A = amounts[rm0, rm1]
    if not np.all(np.isfinite(A)):
        bad = np.nonzero(~np.isfinite(A).all(axis=1))[0] + 1
        raise SolverError(f"non-finite predictions on rows {', '.join(map(str, bad[:20]))}")
    new_cols = list(model_obj.compartments) + list(model_obj.output_names())
    clash = [c for c in new_cols if c in base.columns]
    if clash:
        raise ModelSpecError(
            f"the dataset already has column(s) {', '.join(clash)}, which the output would "
            "overwrite; rename them in the dataset"
        )
    cols = {name: A[:, i] for i, name in enumerate(model_obj.compartments)}
    needed = model_obj.output_parameters()
    p_rows = {k: np.asarray(v)[rm0, np.minimum(rm1, v.shape[1] - 1)] for k, v in prep.theta["p"].items() if k in needed}
    for name, v in model_obj.outputs_from_state(A, p_rows).items():
        cols[name] = np.asarray(v)
    out = frame_copy(base)
    for name, v in cols.items():
        out[name] = v
    return out


def simulate(
    data,
    model: str | CompartmentModel | None = None,
    params=None,
    *,
    solver=None,
    interpolation: str | None = None,
    ode_method: str | None = None,
    grid=None,
    ignore=None,
    accept=None,
) -> pd.DataFrame:
    """Simulate every record of a NONMEM-format dataset.

    Parameters
    ----------
    data
        Path to a CSV file or a :class:`pandas.DataFrame` with NONMEM columns (``ID, TIME`` required;
        ``EVID, AMT, CMT, RATE, II, ADDL, SS, DV, MDV`` optional; other columns are covariates).
        TIME and II in h, AMT in mg, RATE in mg/h for the built-in models.
    model
        Built-in model name (see :func:`pkpd.models.list_models`) or a model object; if ``None``, the
        parameter file's ``model`` entry is used.
    params
        Parameter file path (TOML/JSON), mapping, or :class:`ParameterSpec`.
    solver
        ``"auto"`` (exact for linear models, ODE otherwise), ``"analytic"``, ``"ode"`` or a solver object;
        default: the parameter file's ``solver``, else ``"auto"``. Every result is checked (see Raises);
        with ``"auto"`` the subjects that fail the check are re-solved with a stiff solver (Kvaerno5,
        ``rtol=1e-12``, ``atol=1e-20`` mg after the exact solver; the same tolerances after an ODE solve).
    interpolation
        ``"nocb"`` (NONMEM) or ``"locf"`` for time-varying covariates; default from the parameter file.
    ode_method
        ODE method (``"auto"``, ``"tsit5"``, ``"dopri5"``, ``"dopri8"``, ``"kvaerno5"``); default: the
        parameter file's ``ode_method``, else ``"auto"`` (Tsit5, retried with Kvaerno5 where it fails).
    grid
        Output times added to every subject, in the dataset's time unit (h): ``"START:END:STEP"`` (END
        included, e.g. ``"0:24:0.5"``), ``"0,1,2,4"``, or an array of times (:func:`pkpd.data.parse_grid`).
        As mrgsolve's ``obsaug`` and rxode2's ``et()`` do, the grid rows are added to the dataset's own
        records (which all stay in the output): one ``EVID=2``, ``MDV=1`` row per subject and grid time,
        after the records of the same time (so a grid time at a dose shows the amount after it), with
        the covariates of the record the simulation uses then (the next record with NOCB, the previous
        with LOCF), so the predictions at the dataset's records do not change. The output has a last
        input column ``GRID`` (1 on grid rows, 0 on the dataset's); select ``out[out.GRID == 1]`` for the
        grid alone. ``None``: no grid.
    ignore, accept
        NONMEM ``$DATA`` record filters (:func:`pkpd.data.record_filter`): ``ignore`` characters (``"#"``,
        the default; ``"@"``; ``"C"``) tested on the first column, or conditions ``"(DV.EQ.0,TIME.GT.24)"``;
        ``accept`` conditions ``"(DVID.EQ.1)"``. A column named ``C`` is NONMEM's comment flag: its rows
        starting with ``C`` are always dropped and it is never a covariate. Dropped rows are not simulated
        and not in the output; ``out.attrs["ignored_rows"]`` counts them and ``out.attrs["ignored"]`` says
        which and why. Row numbers in error messages are those of the file.

    Returns
    -------
    pandas.DataFrame
        Every input row and column (the rows the filters keep), in the input order, with the grid rows in
        place and the ``GRID`` column when a grid is given, followed by one column per compartment (amount,
        mg; the effect compartment holds a concentration, mg/L), ``CP`` = central amount / central volume
        (mg/L), and the model's extra outputs (``CE``, ``CM``). On dose records the values include that
        record's own unlagged dose.

    Raises
    ------
    GridError
        A malformed grid (not numbers, END <= START, STEP <= 0, more than 1,000,000 times).
    DatasetError
        Every problem of the dataset (row numbers of the file), or a malformed IGNORE/ACCEPT option
        (:class:`pkpd.data.RecordFilterError`, naming the condition).
    SolverError
        Where a subject's result cannot be vouched for and no fallback applies (or the fallback fails too):
        the exact solver's rounding-error estimate exceeds 1.5e-9 relative plus 1.1e-11 of the amount
        (float64), the ODE solver failed (step limit, non-finite state), an amount is negative beyond
        roundoff (below -1.1e-11 of the subject's largest amount, minus the ODE ``atol``), or the amount in
        the body exceeds the bioavailable dose given so far by more than 1e-10 of it (built-in models,
        subjects without steady-state records). The message names the subjects (IDs).

    Notes
    -----
    The dataset is prepared (validated, doses expanded, padded, the event schedule computed) with numpy in
    one vectorized pass. The last prepared DataFrame is kept (by a hash of its content, column names and
    types, with the model and the options), so calling again with the same records and other parameters
    skips the preparation (the parameter checks still run); a changed DataFrame is prepared again. To
    simulate the same records with many parameter sets, a :class:`Simulator` does the same explicitly,
    without the hash.

    Examples
    --------
    >>> import pandas as pd, pkpd
    >>> df = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 1.0], "AMT": [100.0, 0.0], "CMT": [1, 1], "EVID": [1, 0]})
    >>> out = pkpd.simulate(df, "1cmt_iv", {"CL": 5.0, "V": 50.0})
    >>> round(float(out["CP"].iloc[1]), 6)   # 100/50 * exp(-0.1)
    1.809675
    """
    from .solvers import resolve_solver

    if params is None:
        raise ModelSpecError("a parameter file or mapping is required")
    spec = params if isinstance(params, ParameterSpec) else load_params(params)
    model_obj = _resolve_model(model, spec)
    resolve_solver(
        solver if solver is not None else (spec.solver or "auto"),
        model_obj,
        ode_method if ode_method is not None else spec.ode_method,
    )  # a bad option is reported first
    options = dict(
        solver=solver, interpolation=interpolation, ode_method=ode_method, grid=grid, ignore=ignore, accept=accept
    )
    key = _design_key(data, model_obj, options)
    cached = _LAST_DESIGN.get("entry")
    if key is not None and cached is not None and cached[0] == key:
        return cached[1](spec)
    sim = Simulator(data, model_obj, spec, **options)
    out = sim(spec)
    if key is not None:
        _LAST_DESIGN["entry"] = (key, sim, model_obj)  # the model is kept so that its id stays its own
    return out


#: The last DataFrame :func:`simulate` prepared: ``{"entry": (key, Simulator, model)}``.
_LAST_DESIGN: dict[str, tuple[Any, Simulator, CompartmentModel]] = {}


def _design_key(data: Any, model: CompartmentModel, options: dict[str, Any]) -> tuple | None:
    """A key for reusing a prepared DataFrame: the SHA-256 of its content, column names and types
    (:func:`pkpd.data.frame_sha256`), the model's identity and the options; ``None`` for a file path (read
    each time)."""
    if not isinstance(data, pd.DataFrame):
        return None
    grid = options.get("grid")
    if grid is not None and not isinstance(grid, str):
        grid = np.asarray(grid, float).tobytes()
    rest = {k: (grid if k == "grid" else repr(v)) for k, v in options.items()}
    return (frame_sha256(data, dtypes=True), len(data), id(model), tuple(sorted(rest.items())))


#: Most subjects :func:`plot_profiles` draws (each with its own line and legend entry).
MAX_PLOTTED_IDS = 20
#: Grid points per subject :func:`dense_grid` gives for drawing smooth curves.
DENSE_GRID_POINTS = 481


def dense_grid(result: pd.DataFrame, points: int = DENSE_GRID_POINTS) -> np.ndarray:
    """Evenly spaced times (h) for drawing a simulation's curves: from the first record to the last record or
    the end of the last dosing interval (``TIME + (ADDL + 1) * II`` of the dose rows), whichever is later.

    Parameters
    ----------
    result
        The dataset or a simulation of it (cells as text or numbers; ``TIME``, ``II``, ``ADDL`` in h).
    points
        Number of times.

    Returns
    -------
    numpy.ndarray
        float64 times (h), increasing (one time when every record has the same time and no interval).
    """
    from .data import GRID_COLUMN, standard_columns

    cols = standard_columns(result.drop(columns=[c for c in (GRID_COLUMN,) if c in result.columns]))
    t = cols["TIME"]
    dose = np.isin(cols["EVID"], (1.0, 4.0))
    ends = np.where(dose, t + (cols["ADDL"] + 1) * cols["II"], t)
    t0 = float(np.nanmin(t)) if np.isfinite(t).any() else 0.0
    t1 = float(np.nanmax(ends)) if np.isfinite(ends).any() else t0
    return np.array([t0]) if t1 <= t0 else np.linspace(t0, t1, int(points))


def _output_unit(model: CompartmentModel, name: str) -> str:
    """Unit of an output column (``CP``: amount units / volume units, mg/L for the built-in models)."""
    units = dict(getattr(model, "output_units", None) or {})
    if name in units:
        return str(units[name])
    for o in getattr(model, "outputs", ()):
        if o.name == name:
            return str(o.unit)
    return "mg/L"


def plot_profiles(
    result: pd.DataFrame, model: CompartmentModel, path, *, output: str = "CP", max_ids: int = MAX_PLOTTED_IDS
) -> tuple[int, int]:
    """Write :func:`profiles_figure` as a PNG to ``path``; return (subjects drawn, subjects in the result)."""
    fig, shown, total = profiles_figure(result, model, output=output, max_ids=max_ids)
    fig.savefig(path, format="png")
    return shown, total


def profiles_figure(
    result: pd.DataFrame, model: CompartmentModel, *, output: str = "CP", max_ids: int = MAX_PLOTTED_IDS
):
    """Figure of a dataset simulation: ``output`` (CP, mg/L) against TIME (h), one line per ID on the grid.

    Parameters
    ----------
    result
        Output of :func:`simulate` with a ``grid`` (the ``GRID`` column): each subject's grid rows are drawn
        as one line (a new segment where its time goes back at a reset), and the simulated value at its
        observation records (``EVID`` 0, ``MDV`` 0) as dots in the line's colour. Without grid rows the
        records themselves are joined.
    model
        The model simulated (units of the output, name in the title).
    output
        Output column to draw.
    max_ids
        Most subjects drawn, the first ones in the file; the legend names each drawn ID and, when some
        are left out, says how many.

    Returns
    -------
    (matplotlib.figure.Figure, int, int)
        The figure (axes ``TIME (h)`` and ``CP (mg/L)``), subjects drawn and subjects in the result.
    """
    from matplotlib.lines import Line2D

    from .data import GRID_COLUMN, numeric_column, standard_columns
    from .plotting import new_figure

    base = result.drop(columns=[c for c in (GRID_COLUMN,) if c in result.columns])
    cols = standard_columns(base[[c for c in base.columns if str(c).upper() in ("ID", "TIME", "EVID", "MDV", "AMT")]])
    ident = result["ID"].to_numpy()
    time = cols["TIME"]
    y = numeric_column(result[output])
    grid = (numeric_column(result[GRID_COLUMN]) == 1) if GRID_COLUMN in result.columns else np.zeros(len(result), bool)
    obs = ~grid & (cols["EVID"] == 0) & (cols["MDV"] == 0)
    ids = list(pd.unique(ident))
    shown = ids[: max(int(max_ids), 0)]
    unit = _output_unit(model, output)
    fig = new_figure(9, 5.2)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(shown))]
    handles = []
    # every drawn artist carries a legend text: a subject's later segments its ID's, every subject's observation
    # dots the one shared entry (a grey dot) that the legend shows once
    obs_label = f"{output} at observation records"
    for i, (who, color) in enumerate(zip(shown, colors)):
        sel = ident == who
        line = sel & grid if (sel & grid).any() else sel
        idx = np.flatnonzero(line)
        label = f"ID {_id_text(who)}"
        cut = np.flatnonzero(np.diff(time[idx]) < 0) + 1  # a reset that goes back in time: a new segment
        for k, part in enumerate(np.split(idx, cut)):
            (h,) = ax.plot(
                time[part],
                y[part],
                color=color,
                linewidth=1.2,
                linestyle="-" if i < 10 else "--",
                label=label,
            )
            if k == 0:
                handles.append(h)
        o = np.flatnonzero(sel & obs)
        if o.size and grid.any():
            ax.plot(time[o], y[o], linestyle="none", marker="o", markersize=3.5, color=color, label=obs_label)
    if grid.any() and obs[np.isin(ident, shown)].any():
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markersize=3.5,
                color="0.35",
                label=obs_label,
            )
        )
    ax.set_xlabel("TIME (h)")
    ax.set_ylabel(f"{output} ({unit})")
    ax.set_title(f"{model.name}: {'central concentration CP' if output == 'CP' else output}")
    ax.grid(True, alpha=0.3)
    omitted = len(ids) - len(shown)
    title = f"first {len(shown)} of {len(ids)} IDs ({omitted} not shown)" if omitted > 0 else None
    if handles:
        ax.legend(
            handles=handles,
            title=title,
            fontsize="small",
            title_fontsize="small",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
            frameon=False,
        )
    fig.tight_layout()
    return fig, len(shown), len(ids)


def _id_text(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v).strip()
    return str(int(f)) if f.is_integer() else f"{f:g}"


@dataclass(frozen=True)
class DatasetRun:
    """A dataset simulation as ``pkpd simulate DATA --params FILE`` runs it (:func:`simulate_dataset`).

    Attributes
    ----------
    table
        The output of :func:`simulate`: every input row and column, in the input order, then the model's
        outputs (amounts in mg, concentrations in mg/L); ``GRID`` rows when a grid was given.
    model
        The model simulated.
    spec
        The parameter file read.
    solver
        The solver asked for (``None``: the parameter file's ``solver``, else ``"auto"``).
    grid
        The output grid asked for (``None``: none).
    curves
        What the plot draws (the ``table`` itself with a grid, else the simulation on :func:`dense_grid`);
        ``None`` when no plot was asked for.
    """

    table: pd.DataFrame
    model: CompartmentModel
    spec: ParameterSpec
    solver: str | None = None
    grid: Any = None
    curves: pd.DataFrame | None = None

    @property
    def solver_text(self) -> str:
        """The solver used, e.g. ``"auto -> analytic"``, and how many subjects the stiff method re-solved."""
        used = self.solver or self.spec.solver or "auto"
        if used == "auto":
            used = f"auto -> {'analytic' if self.model.is_linear else 'ode'}"
        n_stiff = int(self.table.attrs.get("stiff_resolved", 0))
        if n_stiff:
            used += (
                f"; {n_stiff} subject(s) re-solved with the stiff ODE method kvaerno5 (failed the first solver's check)"
            )
        return used

    @property
    def notes(self) -> list[str]:
        """What the reader should know: the rows left out by IGNORE/ACCEPT and the comment flag."""
        ignored = self.table.attrs.get("ignored")
        return [str(ignored)] if ignored else []

    def summary(self) -> str:
        """One line: rows (and grid rows), subjects, model and solver."""
        result = self.table
        n_subj = result["ID"].nunique() if "ID" in result.columns else 0
        n_grid = int((result["GRID"] == 1).sum()) if self.grid is not None else 0
        rows = f"{len(result)} rows ({n_grid} on the --grid)" if self.grid is not None else f"{len(result)} rows"
        return (
            f"Simulated {rows}, {n_subj} subject{'s' if n_subj != 1 else ''} with model {self.model.name} "
            f"(solver {self.solver_text})"
        )

    def write_csv(self, path: str | Path) -> Path:
        """Write :attr:`table` as CSV (no index column) to ``path``."""
        self.table.to_csv(path, index=False)
        return Path(path)

    def plot(self, path: str | Path, *, max_ids: int = MAX_PLOTTED_IDS) -> tuple[int, int]:
        """Write the PNG of CP (mg/L) against TIME (h), one line per ID (:func:`plot_profiles`); return
        (subjects drawn, subjects simulated)."""
        if self.curves is None:
            raise ValueError("no plot was asked for: simulate_dataset(..., plot=True)")
        return plot_profiles(self.curves, self.model, path, max_ids=max_ids)


def simulate_dataset(
    data: str | Path,
    params: str | Path,
    *,
    model: str | None = None,
    solver: str | None = None,
    ode_method: str | None = None,
    interpolation: str | None = None,
    grid: Any = None,
    ignore: Sequence[str] | None = None,
    accept: Sequence[str] | None = None,
    plot: bool = False,
) -> DatasetRun:
    """Simulate a NONMEM-format dataset file with a parameter file: the workflow of ``pkpd simulate DATA``.

    Reads the parameter file (:func:`load_params`), takes the model named by ``model`` or else by the file's
    ``model = "..."``, simulates every record (:func:`simulate`, with the options below) and, with ``plot``,
    the lines of the plot: the ``grid``, else a dense grid over the records (:func:`dense_grid`).

    Parameters
    ----------
    data
        The dataset (CSV; TIME in h, AMT in mg, RATE in mg/h).
    params
        The parameter file (TOML or JSON with a ``[parameters]`` table).
    model
        A built-in model name; default: the parameter file's ``model``.
    solver, ode_method, interpolation, grid, ignore, accept
        As for :func:`simulate` (``None``: the parameter file's setting, else the default).
    plot
        Also simulate the plot's lines (:attr:`DatasetRun.curves`).

    Returns
    -------
    DatasetRun
        The table, model and settings; it writes the CSV and the plot and says what was simulated.

    Raises
    ------
    pkpd.PKPDError
        No model given, an invalid dataset or parameter file, a failed solve (the message says which).

    >>> run = simulate_dataset("examples/oxycodone_postop.csv", "examples/oxycodone_agema2021.toml")
    >>> run.summary()
    'Simulated 148 rows, 1 subject with model 1cmt_dual (solver auto -> analytic)'
    """
    spec = load_params(params)
    name = model or spec.model
    if name is None:
        raise ModelSpecError(
            f'no model given: pass --model NAME or set `model = "..."` in {params} (see `pkpd models`)'
        )
    model_obj = get_model(name)
    options: dict[str, Any] = dict(
        solver=solver, ode_method=ode_method, interpolation=interpolation, ignore=ignore, accept=accept
    )
    table = simulate(data, model_obj, spec, grid=grid, **options)
    curves = None
    if plot:  # the plot draws lines on a grid: the given one, else a dense one over the records
        curves = table if grid is not None else simulate(data, model_obj, spec, grid=dense_grid(table), **options)
    return DatasetRun(table, model_obj, spec, solver=solver, grid=grid, curves=curves)
