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
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ._errors import DatasetError, DatasetViolation, ModelSpecError, PKPDError, SolverError
from .data import validate_dataset
from .expr import Expression, compile_parameter_block, evaluate_parameter_block, referenced_columns
from .models import CompartmentModel, get_model

__all__ = ["ParameterSpec", "load_params", "simulate", "prepare", "Prepared"]

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
            raise ModelSpecError(f"ode_method{where} must be one of {', '.join(ODE_METHODS)}, got "
                                 f"{self.ode_method!r}")


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
        unknown = set(content) - {"parameters", "model", "interpolation", "solver", "ode_method"}
        if unknown:
            raise ModelSpecError(f"parameter file: unknown top-level keys {sorted(unknown)} "
                                 "(allowed: model, interpolation, solver, ode_method, parameters)")
        if not isinstance(exprs, Mapping):
            raise ModelSpecError("parameter file: 'parameters' must be a table of name = value/expression")
        return ParameterSpec(exprs, content.get("model"), content.get("interpolation", "nocb"), src_name,
                             content.get("solver"), content.get("ode_method"))
    return ParameterSpec(content, None, "nocb", src_name)


@dataclass
class Prepared:
    """A dataset turned into padded arrays for the engine (see :func:`prepare`)."""

    model: CompartmentModel
    layout: Any
    rec: dict
    dose: dict
    ss: dict
    theta: dict
    frame: pd.DataFrame  # validated numeric frame, original order
    row_map: np.ndarray  # (n_rows, 2): (pseudo-subject, record slot) of each dataset row
    static_schedule: bool = False  # event times do not depend on parameters (no lags, fixed durations)

    def schedule(self, solver) -> dict | None:
        """Precomputed event order for :func:`pkpd.engine.simulate_arrays` (``None`` if times are parametric)."""
        if not self.static_schedule:
            return None
        from .engine import compute_schedule

        key = type(solver).__name__
        if key not in self._sched_cache:
            self._sched_cache[key] = compute_schedule(self.model, self.layout, solver, self.rec, self.dose,
                                                      self.ss, self.theta)
        return self._sched_cache[key]

    def __post_init__(self):
        self._sched_cache = {}


def _check_param_names(model: CompartmentModel, spec: ParameterSpec) -> None:
    names = set(spec.block)
    missing = [p for p in model.param_names if p not in names]
    if missing:
        raise ModelSpecError(
            f"model {model.name} needs parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(units: {', '.join(f'{p.name} [{p.unit}]' for p in model.params if p.name in missing)}); "
            f"the parameter file defines {', '.join(sorted(names)) or 'nothing'}"
        )
    allowed_dose = set(model.dose_params())
    for name in names:
        for pre in _DOSE_PREFIXES:
            if name.startswith(pre) and name[len(pre):].isdigit() and name not in allowed_dose:
                raise ModelSpecError(
                    f"parameter {name} refers to compartment {name[len(pre):]}, which model {model.name} does "
                    f"not have ({model.compartment_table()})"
                )


def prepare(data, model: str | CompartmentModel, params, *, interpolation: str | None = None) -> Prepared:
    """Validate ``data`` against ``model`` and ``params`` and build the engine's padded arrays."""
    import jax.numpy as jnp

    spec = params if isinstance(params, ParameterSpec) else load_params(params)
    model = get_model(model) if isinstance(model, str) else model
    _check_param_names(model, spec)
    interp = interpolation or spec.interpolation
    block = spec.block
    cov_needed = referenced_columns(block)
    forbidden = [model.forcing_cmt + 1] if model.forcing_cmt is not None else []
    source = str(data) if isinstance(data, (str, Path)) else None
    df = validate_dataset(
        data,
        n_compartments=model.n_cmt,
        compartment_names=model.compartments,
        parameter_names=set(block),
        required_covariates=cov_needed - {"TIME", "AMT", "ID", "EVID", "CMT", "RATE", "II", "ADDL", "SS", "DV", "MDV"},
        rate_compartments_forbidden=forbidden,
        model_name=model.name,
    )
    n_rows = len(df)
    ident = df["ID"].to_numpy()
    time = df["TIME"].to_numpy(float)
    evid = df["EVID"].to_numpy(float).astype(int)
    amt = df["AMT"].to_numpy(float)
    cmt = df["CMT"].to_numpy(float).astype(int)
    rate = df["RATE"].to_numpy(float)
    ii = df["II"].to_numpy(float)
    addl = df["ADDL"].to_numpy(float).astype(int)
    ssc = df["SS"].to_numpy(float).astype(int)
    is_dose = np.isin(evid, (1, 4))
    const_inf = is_dose & (ssc == 1) & (amt == 0) & (rate > 0) & (ii == 0)
    reset = (evid == 3) | (evid == 4) | (is_dose & (ssc == 1))

    # --- parameters on the host (for checks and layout decisions) ---
    columns = {c: df[c].to_numpy(float) for c in cov_needed if c in df.columns}
    try:
        host = evaluate_parameter_block(block, columns, xp=np)
    except PKPDError:
        raise
    host = {k: np.broadcast_to(np.asarray(v, float), (n_rows,)) for k, v in host.items()}
    violations = _check_param_values(model, host, is_dose, ssc, rate, ii, cmt, amt, const_inf)
    if violations:
        raise DatasetError(violations, source=spec.source or source)

    # --- pseudo-subjects: an ID block, split where TIME decreases at a reset (vectorized) ---
    new_subj = np.ones(n_rows, bool)
    new_subj[1:] = (ident[1:] != ident[:-1]) | (time[1:] < time[:-1])
    starts = np.nonzero(new_subj)[0]
    ends = np.append(starts[1:], n_rows)
    sid = np.cumsum(new_subj) - 1  # pseudo-subject of each row
    pos = np.arange(n_rows) - starts[sid]  # record slot within it
    N = len(starts)
    R = int((ends - starts).max())
    dosing = is_dose & ~const_inf
    n_dose_row = np.where(dosing, addl + 1, 0)
    D = max(1, int(np.bincount(sid, weights=n_dose_row, minlength=N).max()))
    ss_row = is_dose & (ssc > 0)
    P_ss = int(np.bincount(sid, weights=ss_row, minlength=N).max())
    n = model.n_cmt
    S = max([1] + [len(r) for r in model.routes.values()])

    # infusions and steady-state overlap
    dose_cmt0 = np.clip(cmt - 1, 0, n - 1)
    has_inf = bool(np.any(is_dose & (rate != 0) & ~const_inf)) or any(
        rt.mode == "zero_order" for rs in model.routes.values() for rt in rs)
    M = 1
    ss_rows = np.nonzero(is_dose & (ssc > 0) & ~const_inf)[0]
    for i in ss_rows:
        lag = host.get(f"ALAG{dose_cmt0[i] + 1}", np.zeros(n_rows))[i]
        dur = _host_duration(model, host, i, dose_cmt0[i], amt[i], rate[i])
        lags = [lag] + [host.get(f"ALAG{rt.target + 1}", np.zeros(n_rows))[i]
                        for rs in model.routes.values() for rt in rs]
        durs = [dur] + [host[rt.duration][i] for rs in model.routes.values() for rt in rs if rt.duration]
        M = max(M, int(math.ceil((max(lags) + max(durs)) / ii[i])) + 1)

    # time-varying parameters: any referenced column that changes within a pseudo-subject
    tv = any(np.any(df[c].to_numpy(float) != df[c].to_numpy(float)[starts][sid]) for c in cov_needed if c in df.columns)

    # --- padded record arrays: slot j of subject s holds row starts[s] + min(j, m_s - 1) ---
    m_s = ends - starts
    jj = np.arange(R)[None, :]
    src_row = starts[:, None] + np.minimum(jj, m_s[:, None] - 1)  # (N, R); padding repeats the last row
    valid = jj < m_s[:, None]
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
    rec = {
        "time": time[src_row], "valid": valid, "cmt": dose_cmt0[src_row].astype(np.int32),
        "amt": (amt * is_dose)[src_row], "rate": (rate * is_dose)[src_row], "ii": ii[src_row],
        "reset": reset[src_row] & valid, "next_reset": ep_next[eid][src_row], "epoch_last": ep_last[eid][src_row],
        "dose0": np.where(valid, dose0[src_row], -1).astype(np.int32),
    }
    cols_pad = {c: v[src_row] for c, v in columns.items()}
    row_map = np.stack([sid, pos], axis=1)
    from .engine import Layout

    lay = Layout(n_rec=R, n_dose=D, n_ss=P_ss, n_route=S, n_overlap=M, has_infusion=has_inf,
                 time_varying=tv, locf=(interp == "locf"))
    # --- parameters in JAX (so gradients flow from expressions to predictions) ---
    jcols = {c: jnp.asarray(v) for c, v in cols_pad.items()}
    if "TIME" in cov_needed:
        jcols["TIME"] = jnp.asarray(rec["time"])
    theta = theta_from_columns(model, block, jcols, (N, R))
    names = set(block)
    timed = [q for q in names if q.startswith("ALAG") and q[4:].isdigit()]
    if has_inf:
        timed += [q for q in names if q[:1] in ("F", "D", "R") and q[1:].isdigit()]
        timed += [rt.duration for rs in model.routes.values() for rt in rs if rt.duration]
    return Prepared(model, lay, rec, dose, ss, theta, df, row_map, static_schedule=not timed)


def theta_from_columns(model: CompartmentModel, block, columns, shape):
    """Evaluate the parameter block in JAX and arrange it as the engine expects."""
    import jax.numpy as jnp

    return arrange_theta(model, evaluate_parameter_block(block, columns, xp=jnp), shape)


def arrange_theta(model: CompartmentModel, vals, shape):
    """Engine parameter dict from named values (each broadcastable to ``shape``): structural parameters
    ``p``, route fractions/durations, and per-compartment ``F``, ``ALAG``, ``R``, ``D`` (defaults 1, 0, 1, 1)."""
    import jax.numpy as jnp

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

    return {"p": p, "F": per_cmt("F", 1.0), "ALAG": per_cmt("ALAG", 0.0), "R": per_cmt("R", 1.0),
            "D": per_cmt("D", 1.0)}


def _host_duration(model, host, i, c, amt, rate):
    F = host.get(f"F{c + 1}", np.ones(1))[i] if f"F{c + 1}" in host else 1.0
    if rate > 0:
        return F * amt / rate
    if rate == -1:
        return F * amt / host[f"R{c + 1}"][i]
    if rate == -2:
        return host[f"D{c + 1}"][i]
    return 0.0


def _check_param_values(model, host, is_dose, ssc, rate, ii, cmt, amt, const_inf) -> list[DatasetViolation]:
    out: list[DatasetViolation] = []

    def rows(mask):
        return tuple(int(r) + 1 for r in np.nonzero(mask)[0])

    for q in model.params:
        v = host[q.name]
        bad = ~np.isfinite(v)
        if bad.any():
            out.append(DatasetViolation(rows(bad), None, f"parameter {q.name} is not a finite number"))
        low = np.isfinite(v) & (v <= q.lower) if q.name not in ("FR", "FZO", "FM") else np.isfinite(v) & (
            (v < 0) | (v > 1))
        if low.any():
            what = "in [0, 1]" if q.name in ("FR", "FZO", "FM") else f"> {q.lower:g}"
            out.append(DatasetViolation(rows(low), None, f"parameter {q.name} [{q.unit}] must be {what}; got "
                                        f"{', '.join(f'{x:g}' for x in np.unique(v[low])[:5])}"))
    c0 = np.clip(cmt - 1, 0, model.n_cmt - 1)
    for name, v in host.items():
        for pre, cond, what in (("F", lambda x: x < 0, ">= 0"), ("ALAG", lambda x: x < 0, ">= 0")):
            if name.startswith(pre) and name[len(pre):].isdigit():
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
    for i in np.nonzero(ssrows)[0]:
        lags = [host.get(f"ALAG{c0[i] + 1}", np.zeros_like(amt))[i]]
        lags += [host.get(f"ALAG{rt.target + 1}", np.zeros_like(amt))[i] for rs in model.routes.values() for rt in rs]
        if max(lags) >= ii[i]:
            out.append(DatasetViolation((int(i) + 1,), "II", f"steady-state dose with lag time {max(lags):g} h >= II "
                                        f"{ii[i]:g} h is not supported"))
    if model.forcing_cmt is not None and np.any(is_dose & (ssc > 0)):
        out.append(DatasetViolation(rows(is_dose & (ssc > 0)), "SS",
                                    f"steady state is not available for the Weibull input of {model.name}"))
    return out


def _solve_checked(prep: Prepared, solver, subset: np.ndarray | None = None,
                   check: bool | str = True) -> tuple[np.ndarray, np.ndarray]:
    """Amounts (N, n_rec, n_cmt) and a per-pseudo-subject failure flag (N,) of one solve with its checks
    (:func:`pkpd.engine.simulate_arrays` with ``check``, then :func:`_amount_flags`); with ``subset``
    (pseudo-subject indices) only those subjects are solved."""
    import jax

    from .engine import compute_schedule, simulate_arrays

    arrays = (prep.rec, prep.dose, prep.ss, prep.theta)
    if subset is None:
        sched = prep.schedule(solver)
    else:
        sel = np.asarray(subset)
        arrays = jax.tree_util.tree_map(lambda v: v[sel], arrays)
        sched = compute_schedule(prep.model, prep.layout, solver, *arrays) if prep.static_schedule else None
    amounts, ok = simulate_arrays(prep.model, prep.layout, solver, *arrays, sched, check=check)
    amounts = np.array(jax.device_get(amounts))
    bad = ~np.asarray(ok) | _amount_flags(prep, amounts, solver, subset)
    return amounts, bad


def _amount_flags(prep: Prepared, amounts: np.ndarray, solver, subset=None) -> np.ndarray:
    """Per-subject flags: a non-finite amount, an amount below roundoff (``-1.1e-11 * max|amount| - atol``),
    or (built-in models, subjects without steady-state records) more amount in the body than the
    bioavailable dose given so far, beyond 1e-10 of it."""
    from .engine import _check_tolerances
    from .models.library import _NAME

    N = amounts.shape[0]
    sl = slice(None) if subset is None else np.asarray(subset)
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
    scale = np.abs(A.reshape(N, -1)).max(axis=1)
    atol = getattr(solver, "atol", 0.0)
    bad |= A.reshape(N, -1).min(axis=1) < -(ab * scale + atol)
    if _NAME.match(model.name) and mass_idx:
        rec_t = prep.rec["time"][sl]
        src = prep.dose["src"][sl]
        rows = np.arange(N)[:, None]
        cmt = prep.rec["cmt"][sl][rows, src]
        F = np.asarray(prep.theta["F"][sl] if subset is not None else prep.theta["F"])
        d_amt = prep.rec["amt"][sl][rows, src] * np.maximum(F[rows, src, cmt], 0.0)
        d_amt = np.where(prep.dose["valid"][sl], d_amt, 0.0)  # (N, D) bioavailable amount of each dose
        given = np.einsum("nrd,nd->nr", prep.dose["time"][sl][:, None, :] <= rec_t[:, :, None], d_amt)
        in_body = A[..., mass_idx].sum(axis=2)
        has_ss = prep.ss["valid"][sl].any(axis=1)
        over = (in_body - given * (1.0 + 1e-10)).max(axis=1) > ab * scale
        bad |= over & ~has_ss
    return bad


def _failure_message(prep: Prepared, bad: np.ndarray, solver, fallback) -> str:
    """One message naming the failed subjects and what to do."""
    from .solvers._solvers import Analytic

    first = np.zeros(len(bad), int)
    first[prep.row_map[::-1, 0]] = np.arange(len(prep.row_map))[::-1]
    ids = pd.unique(prep.frame["ID"].to_numpy()[first[np.nonzero(bad)[0]]])
    shown = ", ".join(f"{v:g}" if isinstance(v, (float, np.floating)) else str(v) for v in ids[:10])
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    who = f"{int(bad.sum())} subject(s) (ID {shown}{more})"
    what = ("an amount negative beyond roundoff, more amount in the body than was dosed, or a non-finite "
            "state")
    if isinstance(solver, Analytic) and fallback is None:
        return (f"the exact solver cannot vouch for its result for {who}: its rounding-error estimate exceeds "
                f"1.5e-9 relative (widely separated rate constants), or {what}. Use solver 'auto' (re-solves "
                "them with a stiff ODE solver; CLI --solver auto) or solver 'ode' with ode_method 'kvaerno5'.")
    used = fallback if fallback is not None else solver
    tried = (f" and the stiff retry (ODE method {fallback.method}, rtol {fallback.rtol:g}, atol {fallback.atol:g})"
             if fallback is not None else "")
    return (f"the {'exact solver' if isinstance(solver, Analytic) else f'ODE solver (method {solver.method})'}"
            f"{tried} failed for {who}: step limit reached (max_steps {used.max_steps}), {what}. Try ode_method "
            "'kvaerno5' (CLI --ode-method kvaerno5) or solver=ODE(method='kvaerno5', max_steps=...), or check the "
            "parameters.")


def simulate(data, model: str | CompartmentModel | None = None, params=None, *, solver=None,
             interpolation: str | None = None, ode_method: str | None = None) -> pd.DataFrame:
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

    Returns
    -------
    pandas.DataFrame
        Every input row and column, in the input order, followed by one column per compartment (amount,
        mg; the effect compartment holds a concentration, mg/L), ``CP`` = central amount / central volume
        (mg/L), and the model's extra outputs (``CE``, ``CM``). On dose records the values include that
        record's own unlagged dose.

    Raises
    ------
    SolverError
        Where a subject's result cannot be vouched for and no fallback applies (or the fallback fails too):
        the exact solver's rounding-error estimate exceeds 1.5e-9 relative plus 1.1e-11 of the amount
        (float64), the ODE solver failed (step limit, non-finite state), an amount is negative beyond
        roundoff (below -1.1e-11 of the subject's largest amount, minus the ODE ``atol``), or the amount in
        the body exceeds the bioavailable dose given so far by more than 1e-10 of it (built-in models,
        subjects without steady-state records). The message names the subjects (IDs).

    Examples
    --------
    >>> import pandas as pd, pkpd
    >>> df = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 1.0], "AMT": [100.0, 0.0], "CMT": [1, 1], "EVID": [1, 0]})
    >>> out = pkpd.simulate(df, "1cmt_iv", {"CL": 5.0, "V": 50.0})
    >>> round(float(out["CP"].iloc[1]), 6)   # 100/50 * exp(-0.1)
    1.809675
    """
    from .solvers import resolve_solver
    from .solvers._solvers import Analytic, Auto, stiff_fallback

    if params is None:
        raise ModelSpecError("a parameter file or mapping is required")
    spec = params if isinstance(params, ParameterSpec) else load_params(params)
    model = model or spec.model
    if model is None:
        raise ModelSpecError("no model given: pass a model name or set `model = ...` in the parameter file")
    model_obj = get_model(model) if isinstance(model, str) else model
    solver = solver if solver is not None else (spec.solver or "auto")
    solv = resolve_solver(solver, model_obj, ode_method if ode_method is not None else spec.ode_method)
    prep = prepare(data, model_obj, spec, interpolation=interpolation)
    amounts, bad = _solve_checked(prep, solv)
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
        else:
            raise SolverError(_failure_message(prep, bad, solv, None))
    A = amounts[prep.row_map[:, 0], prep.row_map[:, 1]]
    if not np.all(np.isfinite(A)):
        bad = np.nonzero(~np.isfinite(A).all(axis=1))[0] + 1
        raise SolverError(f"non-finite predictions on rows {', '.join(map(str, bad[:20]))}")
    if isinstance(data, pd.DataFrame):
        out = data.reset_index(drop=True).copy()
    else:  # the file's own cells, untouched (read as text): predictions are appended, nothing rewritten
        from .data import read_dataset

        out = read_dataset(data)
    new_cols = list(model_obj.compartments) + list(model_obj.output_names())
    clash = [c for c in new_cols if c in out.columns]
    if clash:
        raise ModelSpecError(f"the dataset already has column(s) {', '.join(clash)}, which the output would "
                             "overwrite; rename them in the dataset")
    for i, name in enumerate(model_obj.compartments):
        out[name] = A[:, i]
    p_rows = {k: np.asarray(v)[prep.row_map[:, 0], prep.row_map[:, 1]] for k, v in prep.theta["p"].items()}
    for name, v in model_obj.outputs_from_state(A, p_rows).items():
        out[name] = np.asarray(v)
    return out
