"""A population model bound to a dataset: padded arrays, parameter packing and the likelihood.

:class:`Problem` is what every estimation method works on. It holds

* the engine's padded arrays for the dataset (:func:`pkpd.simulate.prepare`), so predictions come from
  the same NONMEM-exact event engine as simulation (ADDL, SS, infusions, lags, resets...);
* flat observation arrays (one entry per record with ``EVID = 0`` and ``MDV = 0``): DV, observation
  type, BLQ flag and LLOQ, the subject they belong to;
* a :class:`Packer` mapping an unconstrained vector ``u`` (what optimizers and samplers move) to the
  natural parameters: typical values, covariate coefficients, omega, IOV variances, residual terms;
* pure JAX functions of ``(u, eta)``: individual parameters, predictions, per-subject conditional
  log-likelihood (Gaussian, with the M3 term ``log P(DV < LLOQ)`` for BLQ records) and the prior density
  of the random effects.

Random effects per subject are one vector ``eta`` of length ``K = k_iiv + n_occ * k_iov``: the IIV etas in
:meth:`PopulationModel.eta_names` order, then one block of IOV kappas per occasion (``OCC`` = 1, 2, ...).
Their covariance is block diagonal: ``diag(Omega, Pi, ..., Pi)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..data import numeric_column, standard_columns
from ..errors import DatasetError, DatasetViolation, ModelSpecError, rows_text
from ..expr import compile_expression, evaluate_parameter_block
from ..models import get_model
from ..simulate import ParameterSpec, arrange_theta, prepare
from ..solvers import ODE, resolve_solver
from ..xla import jit
from .error_models import LOG2PI, TERMS, ErrorModel
from .relations import Relation
from .spec import PopulationModel

__all__ = ["Problem", "Packer", "build_problem", "unused_records", "LOG2PI", "MAX_FIT_MAGNITUDE", "fit_jit"]

# Fitting programs (nested derivatives of the event engine) are large and run for milliseconds: XLA's
# expensive LLVM passes cost far more compile time than they save (measured on the Theoph Laplace
# objective: compile 2.5x faster, run time 9 -> 12 ms), so they are compiled with pkpd.xla's fast_compile
# options. PKPD_FIT_FULL_OPTIMIZATION=1 compiles them with the package's ordinary options instead.
FAST_COMPILE = os.environ.get("PKPD_FIT_FULL_OPTIMIZATION") != "1"


def fit_jit(fun=None, **kwargs):
    """:func:`pkpd.xla.jit` with the fitting programs' options (``fast_compile``; usable as a decorator, with or
    without arguments)."""
    return jit(fun, fast_compile=True if FAST_COMPILE else None, **kwargs)


# ---------------------------------------------------------------------------------------------------
# parameter packing


@dataclass(frozen=True)
class Packer:
    """Unconstrained vector <-> natural parameters.

    ``u_full`` holds every parameter on its estimation scale (fixed ones included); ``free`` marks the
    entries an optimizer moves. Scales: typical values ``log(x - lower)``, logit within finite bounds, or
    identity; covariate coefficients likewise by relation; omega blocks as the lower-triangular Cholesky
    factor with log diagonal; IOV variances and residual terms on the log scale.
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]  # theta | beta | omega | iov | sigma
    code: np.ndarray  # 0 identity, 1 log(x - lower), 2 logit in (lower, upper)
    lower: np.ndarray
    upper: np.ndarray
    init_full: np.ndarray
    free: np.ndarray
    n_theta: int
    n_beta: int
    k_iiv: int
    omega_pos: tuple[tuple[int, int], ...]  # (row, col) in the k_iiv x k_iiv Cholesky factor per omega entry
    n_iov: int
    n_sigma: int

    @property
    def n_free(self) -> int:
        return int(self.free.sum())

    @property
    def free_names(self) -> tuple[str, ...]:
        return tuple(n for n, f in zip(self.names, self.free) if f)

    def full(self, u):
        """``u_full`` from the free vector ``u``."""
        u = jnp.asarray(u)
        idx = np.nonzero(self.free)[0]
        return jnp.asarray(self.init_full, dtype=u.dtype).at[idx].set(u)

    def free_part(self, u_full) -> np.ndarray:
        return np.asarray(u_full)[self.free]

    def natural(self, u_full) -> dict:
        """Natural parameters: ``theta`` (n_theta,), ``beta`` (n_beta,), ``L``/``omega`` (k, k),
        ``iov`` (n_iov,) variances, ``sigma`` (n_sigma,) residual terms."""
        u = jnp.asarray(u_full)
        lo = jnp.asarray(np.where(np.isfinite(self.lower), self.lower, 0.0), u.dtype)
        hi = jnp.asarray(np.where(np.isfinite(self.upper), self.upper, 1.0), u.dtype)
        code = self.code
        x = jnp.where(
            code == 1,
            lo + jnp.exp(jnp.where(code == 1, u, 0.0)),
            jnp.where(code == 2, lo + (hi - lo) * jax.nn.sigmoid(u), u),
        )
        i0, i1 = 0, self.n_theta
        theta = x[i0:i1]
        beta = x[i1 : i1 + self.n_beta]
        i2 = i1 + self.n_beta
        n_om = len(self.omega_pos)
        k = self.k_iiv
        om_u = u[i2 : i2 + n_om]
        if k:
            rows = np.array([r for r, _ in self.omega_pos])
            cols = np.array([c for _, c in self.omega_pos])
            vals = jnp.where(jnp.asarray(rows == cols), jnp.exp(om_u), om_u)
            L = jnp.zeros((k, k), u.dtype).at[rows, cols].set(vals)
        else:
            L = jnp.zeros((0, 0), u.dtype)
        i3 = i2 + n_om
        iov = jnp.exp(u[i3 : i3 + self.n_iov])
        sigma = jnp.exp(u[i3 + self.n_iov : i3 + self.n_iov + self.n_sigma])
        return {"theta": theta, "beta": beta, "L": L, "omega": L @ L.T, "iov": iov, "sigma": sigma}


def _to_scale(x: float, lo: float, hi: float) -> tuple[int, float]:
    if math.isfinite(lo) and math.isfinite(hi):
        p = (x - lo) / (hi - lo)
        return 2, math.log(p / (1.0 - p))
    if math.isfinite(lo):
        return 1, math.log(x - lo)
    if math.isfinite(hi):
        raise ModelSpecError("an upper bound without a lower bound is not supported; give both bounds")
    return 0, x


def _make_packer(spec: PopulationModel) -> Packer:
    names, kinds, code, lower, upper, init, free = [], [], [], [], [], [], []

    def add(name, kind, c, lo, hi, value, is_free):
        names.append(name)
        kinds.append(kind)
        code.append(c)
        lower.append(lo)
        upper.append(hi)
        init.append(value)
        free.append(is_free)

    for p in spec.parameters:
        c, v = _to_scale(p.estimate, p.lower, p.upper)
        add(p.name, "theta", c, p.lower, p.upper, v, not p.fixed)
    n_theta = len(names)
    for p in spec.parameters:
        for eff in p.covariates:
            lo, hi = eff.bounds() or (-math.inf, math.inf)
            for nm, v0 in zip(eff.coefficient_names(p.name), eff.initial()):
                c, v = _to_scale(v0, lo, hi)
                add(nm, "beta", c, lo, hi, v, not eff.fixed)
    n_beta = len(names) - n_theta
    omega_pos = []
    off = 0
    for bnames, full, fixed in spec.iiv_blocks():
        L = np.linalg.cholesky(full)
        for i in range(len(bnames)):
            for j in range(i + 1):
                nm = f"omega({bnames[i]})" if i == j else f"omega({bnames[i]},{bnames[j]})"
                add(nm, "omega", 0, -math.inf, math.inf, math.log(L[i, j]) if i == j else L[i, j], not fixed)
                omega_pos.append((off + i, off + j))
        off += len(bnames)
    for n, v in spec.iov.items():
        add(f"iov({n})", "iov", 0, -math.inf, math.inf, math.log(v), True)
    n_iov = len(spec.iov)
    n_sigma = 0
    for o in spec.observations:
        for t in o.error_terms():
            add(f"{o.name}.{t}", "sigma", 0, -math.inf, math.inf, math.log(o.initial(t)), t not in o.fixed)
            n_sigma += 1
    return Packer(
        tuple(names),
        tuple(kinds),
        np.array(code),
        np.array(lower, float),
        np.array(upper, float),
        np.array(init, float),
        np.array(free, bool),
        n_theta,
        n_beta,
        off,
        tuple(omega_pos),
        n_iov,
        n_sigma,
    )


# ---------------------------------------------------------------------------------------------------
# the problem


@dataclass(eq=False)
class _Structure:
    """The static part of a :class:`Problem`: the model, the layout of its arrays and the host-only data.

    It is the static field of the equinox module, so it is part of the pytree's structure, and it is equal
    (and hashed) by :attr:`key`, the model structure and the array layout, not by data: one compiled program
    serves every dataset of the same model and shapes (replicate studies, refits with other initial
    estimates, bootstrap). Host-only data (subject IDs, dataset frame, notes...) ride along without entering
    the key, as the programs never read them.
    """

    spec: PopulationModel
    model: Any
    solver: Any
    layout: Any
    packer: Packer  # its init_full is the value at build time; Problem.init_full is the leaf
    ids: np.ndarray  # original subject IDs, in order of first appearance
    effect_meta: tuple[tuple[tuple[Relation, slice], ...], ...]  # per parameter: (relation, coefficient slice)
    eta_index: np.ndarray  # (n_param,) index of each parameter's IIV eta, -1 if none
    iov_index: np.ndarray  # (n_param,) index of each parameter's IOV kappa within an occasion, -1 if none
    n_occ: int
    obs_host: dict  # the observation arrays the programs do not read (row, dv, lloq)
    frame: pd.DataFrame
    row_map: np.ndarray  # (n_rows, 2): (pseudo-subject, record slot) of each dataset row
    notes: list
    data: pd.DataFrame | None
    data_rows: np.ndarray | None
    out_exprs: list = field(init=False, repr=False)
    key: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.out_exprs = [compile_expression(o.output, name=o.name) for o in self.spec.observations]
        self.key = _static_key(self)

    def __eq__(self, other):
        return isinstance(other, _Structure) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


class Problem(eqx.Module):
    """A population model bound to a dataset (build with :func:`build_problem`).

    The JAX methods are pure functions of ``(u_full, eta)`` with ``eta`` of shape ``(n_id, K)``.

    An equinox module: its array fields are the leaves the compiled programs take (engine inputs, covariates,
    relation data, occasions, device observation arrays, subject of each pseudo-subject, initial estimates),
    and :attr:`static` (a static field) holds the structure, equal by model structure and shapes, so a
    program compiled for one problem serves every problem of the same model and shapes. The attributes of
    the structure (``spec``, ``model``, ``packer``, ``ids``, ``obs``...) read as attributes of the problem.
    """

    arrays: dict  # rec, dose, ss, sched (engine inputs)
    cov: dict  # name -> (Np, R) covariate arrays (jnp)
    effect_data: tuple  # data of every covariate relation, parameter by parameter (see effects)
    occ: np.ndarray | None  # (Np, R) 0-based occasion index per record, or None
    obs_arrays: dict  # the observation arrays the programs read (_DEV_OBS)
    id_of_pseudo: np.ndarray  # (Np,) subject index of each engine pseudo-subject
    init_full: np.ndarray  # every parameter's initial value on the estimation scale (Packer.init_full)
    static: _Structure = eqx.field(static=True)

    @classmethod
    def create(
        cls,
        *,
        spec: PopulationModel,
        model: Any,
        solver: Any,
        layout: Any,
        arrays: dict,
        packer: Packer,
        ids: np.ndarray,
        id_of_pseudo: np.ndarray,
        cov: dict,
        effects: list,
        eta_index: np.ndarray,
        iov_index: np.ndarray,
        occ: np.ndarray | None,
        n_occ: int,
        obs: dict,
        frame: pd.DataFrame,
        row_map: np.ndarray,
        notes: list | None = None,
        data: pd.DataFrame | None = None,
        data_rows: np.ndarray | None = None,
    ) -> Problem:
        """A problem from its parts: ``effects`` per parameter a list of ``(Relation, coefficient slice, data)``;
        ``obs`` the flat observation arrays (pseudo, slot, id, row, dv, y, type, blq, lloq, lloq_t, time)."""
        static = _Structure(
            spec=spec,
            model=model,
            solver=solver,
            layout=layout,
            packer=packer,
            ids=ids,
            effect_meta=tuple(tuple((rel, sl) for rel, sl, _ in lst) for lst in effects),
            eta_index=eta_index,
            iov_index=iov_index,
            n_occ=n_occ,
            obs_host={k: v for k, v in obs.items() if k not in _DEV_OBS},
            frame=frame,
            row_map=row_map,
            notes=[] if notes is None else notes,
            data=data,
            data_rows=data_rows,
        )
        return cls(
            arrays=arrays,
            cov=cov,
            effect_data=tuple(d for lst in effects for _, _, d in lst),
            occ=occ,
            obs_arrays={k: obs[k] for k in _DEV_OBS},
            id_of_pseudo=id_of_pseudo,
            init_full=packer.init_full,
            static=static,
        )

    def replace(self, **changes) -> Problem:
        """A copy with other parts (the arguments of :meth:`create`), its structure key recomputed."""
        st = self.static
        parts = dict(
            spec=st.spec,
            model=st.model,
            solver=st.solver,
            layout=st.layout,
            arrays=self.arrays,
            packer=self.packer,
            ids=st.ids,
            id_of_pseudo=self.id_of_pseudo,
            cov=self.cov,
            effects=self.effects,
            eta_index=st.eta_index,
            iov_index=st.iov_index,
            occ=self.occ,
            n_occ=st.n_occ,
            obs=self.obs,
            frame=st.frame,
            row_map=st.row_map,
            notes=st.notes,
            data=st.data,
            data_rows=st.data_rows,
        )
        return Problem.create(**{**parts, **changes})

    # ---- the structure's parts, read as attributes -----------------------------------------------------
    @property
    def spec(self) -> PopulationModel:
        return self.static.spec

    @property
    def model(self) -> Any:
        return self.static.model

    @property
    def solver(self) -> Any:
        return self.static.solver

    @property
    def layout(self) -> Any:
        return self.static.layout

    @property
    def packer(self) -> Packer:
        """The parameter packing, with this problem's (possibly traced) initial values."""
        return replace(self.static.packer, init_full=self.init_full)

    @property
    def ids(self) -> np.ndarray:
        return self.static.ids

    @property
    def eta_index(self) -> np.ndarray:
        return self.static.eta_index

    @property
    def iov_index(self) -> np.ndarray:
        return self.static.iov_index

    @property
    def n_occ(self) -> int:
        return self.static.n_occ

    @property
    def effects(self) -> list:
        """Per parameter: a list of ``(Relation, coefficient slice, data)`` of its covariate factors."""
        it = iter(self.effect_data)
        return [[(rel, sl, next(it)) for rel, sl in lst] for lst in self.static.effect_meta]

    @property
    def obs(self) -> dict:
        """Flat observation arrays: pseudo, slot, id, row, dv, y, type, blq, lloq, lloq_t, time."""
        return {**self.static.obs_host, **self.obs_arrays}

    @property
    def frame(self) -> pd.DataFrame:
        return self.static.frame

    @property
    def row_map(self) -> np.ndarray:
        """(n_rows, 2): (pseudo-subject, record slot) of each dataset row (host only)."""
        return self.static.row_map

    @property
    def notes(self) -> list:
        return self.static.notes

    @property
    def data(self) -> pd.DataFrame | None:
        """The dataset rows fitted, as read (after IGNORE/ACCEPT and the comment column ``C``); ``None`` when
        built directly."""
        return self.static.data

    @property
    def data_rows(self) -> np.ndarray | None:
        """The 1-based row of the file of each row of :attr:`data` (``None`` when built directly)."""
        return self.static.data_rows

    # ---- sizes ------------------------------------------------------------------------------------
    @property
    def n_id(self) -> int:
        return len(self.ids)

    @property
    def n_obs(self) -> int:
        return len(self.obs["dv"])

    @property
    def k_iiv(self) -> int:
        return self.packer.k_iiv

    @property
    def n_eta(self) -> int:
        """Random effects per subject: IIV etas plus IOV kappas for every occasion."""
        return self.packer.k_iiv + self.n_occ * self.packer.n_iov

    @property
    def n_normal_obs(self) -> int:
        """Observations with a Gaussian likelihood (not BLQ): the ``N`` of NONMEM's ``N log(2 pi)``."""
        return int((~self.obs["blq"]).sum())

    def eta_labels(self) -> list[str]:
        labels = [f"eta({n})" for n in self.spec.eta_names()]
        for o in range(self.n_occ):
            labels += [f"kappa({n},occ{o + 1})" for n in self.spec.iov]
        return labels

    def init_u(self) -> np.ndarray:
        """Free vector of the initial estimates."""
        return self.packer.init_full[self.packer.free].copy()

    # ---- random-effect prior ---------------------------------------------------------------------
    def chol_full(self, nat) -> jnp.ndarray:
        """Cholesky factor of the block-diagonal covariance of one subject's random-effect vector."""
        L = nat["L"]
        if self.n_occ and self.packer.n_iov:
            pi = jnp.tile(jnp.sqrt(nat["iov"]), self.n_occ)
            k = L.shape[0]
            K = self.n_eta
            full = jnp.zeros((K, K), L.dtype).at[:k, :k].set(L)
            idx = np.arange(k, K)
            return full.at[idx, idx].set(pi)
        return L

    def log_prior_eta(self, u_full, eta) -> jnp.ndarray:
        """``log N(eta_i; 0, Omega_full)`` per subject, shape ``(n_id,)`` (full normalizing constant)."""
        if self.n_eta == 0:
            return jnp.zeros(self.n_id)
        Lf = self.chol_full(self.packer.natural(u_full))
        z = jax.scipy.linalg.solve_triangular(Lf, eta.T, lower=True)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diag(Lf)))
        return -0.5 * jnp.sum(z * z, axis=0) - 0.5 * logdet - 0.5 * self.n_eta * LOG2PI

    # ---- individual parameters -------------------------------------------------------------------
    def individual(self, u_full, eta) -> dict:
        """Individual values of every estimated parameter at every record: name -> (Np, R)."""
        nat = self.packer.natural(u_full)
        theta, beta = nat["theta"], nat["beta"]
        Np, R = self.arrays["rec"]["time"].shape
        eta_p = eta[jnp.asarray(self.id_of_pseudo)] if self.n_eta else jnp.zeros((Np, 0))
        out = {}
        k = self.packer.k_iiv
        for j, p in enumerate(self.spec.parameters):
            tv = theta[j] * jnp.ones((Np, R), theta.dtype)
            for rel, sl, data in self.effects[j]:
                tv = rel.apply(beta[sl], data, tv)
            re = jnp.zeros((Np, R), tv.dtype)
            if self.eta_index[j] >= 0:
                re = re + eta_p[:, self.eta_index[j]][:, None]
            if self.iov_index[j] >= 0 and self.n_occ:
                cols = k + jnp.asarray(self.occ) * self.packer.n_iov + int(self.iov_index[j])
                re = re + jnp.take_along_axis(eta_p, cols, axis=1)
            out[p.name] = p.iiv_model.apply(tv, re)
        return out

    def structural(self, indiv: dict) -> dict:
        """Individual + derived parameters (name -> (Np, R)): everything expressions may reference."""
        vals = dict(indiv)
        if self.spec.derived:
            env = {**self.cov, **indiv}
            vals.update(evaluate_parameter_block(self.spec.derived_block(), env, xp=jnp))
        return vals

    # ---- predictions -----------------------------------------------------------------------------
    def predict(self, u_full, eta) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Model predictions at the observation records, shape ``(n_obs,)``, and a per-pseudo-subject
        solver success flag."""
        o = self.obs
        return self.predict_at(u_full, eta, o["pseudo"], o["slot"], o["type"], o["time"])

    def predict_at(self, u_full, eta, pseudo, slot, types, times) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Predictions of observation type ``types[j]`` at record ``(pseudo[j], slot[j])`` (any record of the
        dataset, e.g. ``EVID = 2`` rows of a prediction grid; :attr:`row_map` maps dataset rows to records).
        Index arrays must be passed as arguments of a compiled function, not read from a Problem's host
        attributes, since the compiled program is shared by problems of the same structure."""
        from ..engine import _simulate_core

        vals = self.structural(self.individual(u_full, eta))
        Np, R = self.arrays["rec"]["time"].shape
        theta = arrange_theta(self.model, vals, (Np, R))
        a = self.arrays
        amounts, ok = _simulate_core(
            self.model, self.layout, self.solver, a["rec"], a["dose"], a["ss"], theta, a["sched"]
        )
        ps, sl = jnp.asarray(pseudo), jnp.asarray(slot)
        A = amounts[ps, sl]  # (n, n_cmt)
        p_obs = {k: v[ps, sl] for k, v in vals.items()}
        env = {**{k: v[ps, sl] for k, v in self.cov.items()}, **p_obs}
        env.update(self.model.outputs_from_state(A, p_obs))
        for i, c in enumerate(self.model.compartments):
            env[c] = A[:, i]
        env["TIME"] = jnp.asarray(times)
        preds = [jnp.broadcast_to(e.evaluate(env, jnp), A.shape[:1]) for e in self.static.out_exprs]
        f = preds[0] if len(preds) == 1 else jnp.choose(jnp.asarray(types), preds, mode="clip")
        return f, ok

    # ---- observation models (one per observation type: pkpd.fit.error_models) ----------------------
    @property
    def error_models(self) -> tuple[ErrorModel, ...]:
        """The error model of each observation type (``obs["type"]`` indexes them)."""
        return tuple(o.error_model for o in self.spec.observations)

    def _by_type(self, u_full, f, fn) -> jnp.ndarray:
        """``fn(error_model, f, params)`` of each observation's type, per observation (n_obs,): ``params`` are
        the type's residual terms (natural values, scalars). With several types every type's function is
        evaluated on all observations, with ``f`` replaced by 1 on the other types' records (so that no branch
        sees a value outside its domain, nor gives a derivative that is not finite), and the observation's
        own type is kept."""
        sigma = self.packer.natural(u_full)["sigma"]
        parts = []
        off = 0
        for em in self.error_models:
            parts.append((em, {name: sigma[off + k] for k, name in enumerate(em.term_names)}))
            off += len(em.terms)
        if len(parts) == 1:
            em, params = parts[0]
            return fn(em, f, params)
        types = jnp.asarray(self.obs["type"])
        out = None
        for t, (em, params) in enumerate(parts):
            mine = types == t
            val = fn(em, jnp.where(mine, f, 1.0), params)
            out = val if out is None else jnp.where(mine, val, out)
        return out

    def residual_sd(self, u_full, f) -> jnp.ndarray:
        """Residual SD per observation on the likelihood scale (DV units; log units for log-normal types)."""
        return self._by_type(u_full, f, lambda em, fi, params: em.sd(fi, params))

    def to_scale(self, x) -> np.ndarray:
        """Values in DV units at the observation records (n_obs,) or replicates of them (..., n_obs) on the
        likelihood scale of each record's type (host; NaN where undefined, e.g. log of DV <= 0)."""
        x = np.asarray(x, float)
        out = np.array(x, float, copy=True)
        types = np.asarray(self.obs["type"])
        for t, em in enumerate(self.error_models):
            mine = types == t
            out[..., mine] = em.to_scale(x[..., mine])
        return out

    def scale_jacobian(self, jac, f) -> np.ndarray:
        """Derivatives of the predictions ``f`` (n_obs, K) as derivatives of the predictions on the likelihood
        scale (host)."""
        jac = np.asarray(jac, float)
        f = np.asarray(f, float)
        out = np.array(jac, float, copy=True)
        types = np.asarray(self.obs["type"])
        for t, em in enumerate(self.error_models):
            mine = types == t
            out[mine] = em.scale_jacobian(jac[mine], f[mine])
        return out

    def obs_loglik(self, u_full, eta) -> jnp.ndarray:
        """Log-likelihood of every observation given ``eta`` (n_obs,), ``-inf``-free: a failed or
        non-finite prediction gives ``nan`` which callers treat as a rejected point."""
        return self.obs_loglik_at(u_full, *self.predict(u_full, eta))

    def obs_loglik_at(self, u_full, f, ok) -> jnp.ndarray:
        """:meth:`obs_loglik` from the predictions ``f`` at the observation records (n_obs,) and the
        per-pseudo-subject solver flags ``ok`` (e.g. the first ``n_obs`` values of a :meth:`predict_at` call
        that also predicts other records)."""
        y, blq, lloq = (jnp.asarray(self.obs[k]) for k in ("y", "blq", "lloq_t"))
        ll = self._by_type(u_full, f, lambda em, fi, params: em.log_prob(y, fi, params, blq, lloq))
        good = ok[jnp.asarray(self.obs["pseudo"])] & jnp.isfinite(f)
        return jnp.where(good, ll, jnp.nan)

    def _by_subject(self, ll) -> jnp.ndarray:
        """Per-observation values (n_obs,) summed by subject (n_id,)."""
        return jax.ops.segment_sum(ll, jnp.asarray(self.obs["id"]), num_segments=self.n_id)

    def loglik_id(self, u_full, eta) -> jnp.ndarray:
        """Conditional log-likelihood ``log p(y_i | eta_i)`` per subject (n_id,)."""
        return self._by_subject(self.obs_loglik(u_full, eta))

    def neg_log_joint(self, u_full, eta) -> jnp.ndarray:
        """``-log p(y_i | eta_i) - log p(eta_i)`` per subject (n_id,); ``nan`` where a prediction failed."""
        return -(self.loglik_id(u_full, eta) + self.log_prior_eta(u_full, eta))

    def neg_log_joint_at(self, u_full, eta, f, ok) -> jnp.ndarray:
        """:meth:`neg_log_joint` from the predictions at the observation records (see :meth:`obs_loglik_at`)."""
        return -(self._by_subject(self.obs_loglik_at(u_full, f, ok)) + self.log_prior_eta(u_full, eta))

    # ---- simulation ------------------------------------------------------------------------------
    def simulate_dv(self, u_full, key, n_rep: int, eta=None) -> jnp.ndarray:
        """Replicates of the observations (n_rep, n_obs) under the model, new etas (or the given ``eta``)
        and new residual errors; log-normal types are returned on the DV scale."""
        nat = self.packer.natural(u_full)
        Lf = self.chol_full(nat)

        def one(k):
            k1, k2 = jax.random.split(k)
            if eta is None and self.n_eta:
                e = jax.random.normal(k1, (self.n_id, self.n_eta)) @ Lf.T
            else:
                e = jnp.zeros((self.n_id, self.n_eta)) if eta is None else eta
            f, _ = self.predict(u_full, e)
            sd = self.residual_sd(u_full, f)
            eps = jax.random.normal(k2, f.shape) * sd
            return self._by_type(u_full, f, lambda em, fi, params: em.simulate(fi, eps))

        return jax.lax.map(one, jax.random.split(key, n_rep))


# ---------------------------------------------------------------------------------------------------
# the structure key: one compiled program serves every dataset of the same model and shapes

_DEV_OBS = ("pseudo", "slot", "id", "y", "blq", "lloq_t", "type", "time")


def _structure(spec: PopulationModel) -> str:
    """The model file without initial values (they are data: ``init_full`` is a leaf)."""
    import json

    d = spec.to_dict()
    d["model"].pop("description", None)
    d.pop("covariates", None)  # units: labels only
    for par in d["parameters"].values():
        for k in ("estimate", "unit", "description"):
            par.pop(k, None)
        if "iiv" in par:
            par["iiv"] = True
        for c in par.get("covariates", []):
            c.pop("estimate", None)
    for b in d.get("omega", {}).get("block", []):
        b.pop("values", None)
    if "iov" in d:
        d["iov"] = sorted(d["iov"])
    for o in d["observations"].values():
        for t in (*TERMS, "unit"):
            o.pop(t, None)
    return json.dumps(d, sort_keys=True, default=str)


def _static_key(st: _Structure) -> tuple:
    return (
        _structure(st.spec),
        st.model.name,
        repr(st.solver),
        st.layout,
        st.n_occ,
        len(st.ids),
        tuple(st.eta_index),
        tuple(st.iov_index),
        tuple(tuple((rel.name, sl.start, sl.stop) for rel, sl in lst) for lst in st.effect_meta),
        st.packer.code.tobytes(),
        st.packer.free.tobytes(),
    )


_predict_jit = fit_jit(lambda prob, u_full, eta: prob.predict(u_full, eta))


# ---------------------------------------------------------------------------------------------------
# building


def _numeric(frame: pd.DataFrame, col: str) -> np.ndarray:
    """Float values of a column under the dataset rules (:func:`pkpd.data.numeric_column`: '.'/blank NaN)."""
    return numeric_column(frame[col])


#: Largest magnitude of TIME, AMT, RATE, II, DV, LLOQ and covariate values a fit accepts: the likelihood
#: squares residuals and multiplies doses, rates and times, so a larger value overflows (or is a unit or
#: typing error); 1e15 keeps every such product finite in float32 and float64.
MAX_FIT_MAGNITUDE = 1e15


def unused_records(raw: pd.DataFrame, rows: np.ndarray | None = None) -> tuple[np.ndarray, str | None]:
    """Records that hold a DV value but are not fitted observations.

    Parameters
    ----------
    raw
        The dataset as read (:func:`pkpd.data.read_dataset`) or a frame.
    rows
        1-based row number in the file of each row of ``raw`` (after IGNORE/ACCEPT filtering), used in the
        note; default ``1..len(raw)``.

    Returns
    -------
    (numpy.ndarray, str or None)
        0-based row indices of the records with ``EVID`` 0 or 2 and a number in ``DV`` that are not
        observations (``EVID`` 0 and ``MDV`` 0, under the dataset's ``"."``/blank rules), and a note for the
        user naming their count and 1-based rows (``None`` when there are none).
    """
    frame = raw.rename(columns={c: str(c).strip().upper() for c in raw.columns if str(c).strip().upper() in _STD})
    if "DV" not in frame:
        return np.zeros(0, int), None
    cols = standard_columns(frame)
    evid, mdv = cols["EVID"], cols["MDV"]
    has_value = np.isfinite(numeric_column(frame["DV"]))
    unused = np.nonzero(np.isin(evid, (0.0, 2.0)) & ~((evid == 0) & (mdv == 0)) & has_value)[0]
    if unused.size == 0:
        return unused, None
    number = (lambda i: int(i) + 1) if rows is None else (lambda i: int(rows[i]))
    n = unused.size
    note = (
        f"{n} record{'s' if n > 1 else ''} with a DV value {'are' if n > 1 else 'is'} not fitted because "
        f"{'they are' if n > 1 else 'it is'} not an observation (EVID 0 and MDV 0): "
        f"{rows_text([number(i) for i in unused])}; set MDV = 0 (and EVID = 0) to fit {'them' if n > 1 else 'it'}"
    )
    return unused, note


def _too_large(col: str, values: np.ndarray) -> str:
    shown = ", ".join(f"{x:g}" for x in list(dict.fromkeys(values.tolist()))[:5])
    limit = f"1e{math.log10(MAX_FIT_MAGNITUDE):.0f}"
    return (
        f"{col} {shown} is too large for a fit (the magnitude must be below {limit}: the "
        "likelihood would overflow); check the units, or a typing error"
    )


def _fit_checks(raw: pd.DataFrame, spec: PopulationModel, model) -> tuple[list[DatasetViolation], dict]:
    """Fit-specific dataset checks: DV, DVID, BLQ/LLOQ, OCC and covariates, on the raw frame."""
    out: list[DatasetViolation] = []
    frame = raw.rename(columns={c: str(c).strip().upper() for c in raw.columns if str(c).strip().upper() in _STD})

    def rows(mask):
        return tuple(int(i) + 1 for i in np.nonzero(mask)[0])

    n = len(frame)
    # EVID, MDV and DV under the same '.'/blank rules as every other command (pkpd.data)
    std = standard_columns(frame)
    evid, mdv = std["EVID"], std["MDV"]
    is_obs = (evid == 0) & (mdv == 0)
    info: dict[str, Any] = {"is_obs": is_obs}
    if "DV" not in frame:
        out.append(
            DatasetViolation(
                (), "DV", "column DV is missing: the fit needs observed values on observation records (EVID 0, MDV 0)"
            )
        )
        return out, info
    dv = std["DV"]
    bad = is_obs & ~np.isfinite(dv)
    if bad.any():
        out.append(
            DatasetViolation(
                rows(bad),
                "DV",
                "DV must be a number on observation records (EVID 0, "
                "MDV 0; '.' means 0, a blank DV is missing); set MDV = 1 on records without "
                "an observation",
            )
        )
    # magnitudes the likelihood can hold (a larger value is a unit or typing error)
    dose = np.isin(evid, (1.0, 4.0))
    for col, where in (("TIME", np.ones(n, bool)), ("AMT", dose), ("RATE", dose), ("II", dose), ("DV", is_obs)):
        if col in frame:
            v = std[col]
            with np.errstate(invalid="ignore"):
                huge = where & np.isfinite(v) & (np.abs(v) >= MAX_FIT_MAGNITUDE)
            if huge.any():
                out.append(DatasetViolation(rows(huge), col, _too_large(col, v[huge])))
    # observation types
    obs_types = spec.observations
    if "DVID" in frame:
        dvid = _numeric(frame, "DVID")
        known = [o.dvid if o.dvid is not None else 1 for o in obs_types]
        badid = is_obs & ~np.isin(dvid, known)
        if badid.any():
            vals = sorted({f"{v:g}" for v in dvid[badid]})
            out.append(
                DatasetViolation(
                    rows(badid),
                    "DVID",
                    f"DVID {', '.join(vals)} is not declared in the "
                    f"model's [observations] (known: {', '.join(map(str, known))})",
                )
            )
        typ = np.zeros(n, int)
        for t, k in enumerate(known):
            typ[dvid == k] = t
    else:
        if len(obs_types) > 1:
            out.append(
                DatasetViolation(
                    (),
                    "DVID",
                    f"the model declares {len(obs_types)} observation types; the "
                    "dataset needs a DVID column saying which each record is",
                )
            )
        typ = np.zeros(n, int)
    info["type"] = typ
    # BLQ / LLOQ
    blq = np.zeros(n, bool)
    lloq = np.full(n, np.nan)
    for t, o in enumerate(obs_types):
        if o.lloq is not None:
            lloq[typ == t] = o.lloq
    if "LLOQ" in frame:
        col = _numeric(frame, "LLOQ")
        huge = is_obs & np.isfinite(col) & (np.abs(col) >= MAX_FIT_MAGNITUDE)
        if huge.any():
            out.append(DatasetViolation(rows(huge), "LLOQ", _too_large("LLOQ", col[huge])))
        lloq = np.where(np.isfinite(col), col, lloq)
    if "BLQ" in frame:
        b = _numeric(frame, "BLQ")
        badb = is_obs & ~np.isin(b, (0, 1))
        if badb.any():
            out.append(DatasetViolation(rows(badb), "BLQ", "BLQ must be 0 or 1 on observation records"))
        blq = is_obs & (b == 1)
    else:
        blq = is_obs & np.isfinite(lloq) & np.isfinite(dv) & (dv < lloq)
    nolloq = blq & ~(np.isfinite(lloq) & (lloq > 0))
    if nolloq.any():
        out.append(
            DatasetViolation(
                rows(nolloq),
                "LLOQ",
                "BLQ records need a positive LLOQ: add an LLOQ column "
                "or `lloq = ...` to the observation type in the model file",
            )
        )
    info["blq"], info["lloq"] = blq, lloq
    for t, o in enumerate(obs_types):  # DV values without a value on the likelihood scale (log DV <= 0)
        em = o.error_model
        badl = is_obs & (typ == t) & ~blq & np.isfinite(dv) & ~np.isfinite(em.to_scale(dv))
        if badl.any():
            out.append(DatasetViolation(rows(badl), "DV", f"observation type {o.name} has {em.dv_rule}"))
    # occasions
    if spec.iov:
        if "OCC" not in frame:
            out.append(DatasetViolation((), "OCC", "the model has [iov]: the dataset needs an OCC column (1, 2, ...)"))
        else:
            occ = _numeric(frame, "OCC")
            bado = ~(np.isfinite(occ) & (occ >= 1) & (occ == np.round(occ)))
            if bado.any():
                out.append(DatasetViolation(rows(bado), "OCC", "OCC must be an integer >= 1 on every record"))
            info["occ"] = occ
    # covariates
    needed = spec.covariate_columns()
    for c in sorted(needed):
        if c not in frame:
            users = [p.name for p in spec.parameters for e in p.covariates if c in e.columns()]
            why = f" (used by {', '.join(users)})" if users else ""
            out.append(
                DatasetViolation(
                    (),
                    c,
                    f"covariate column {c}{why} is missing from the dataset; add it or "
                    "remove the relation from the model file",
                )
            )
            continue
        v = _numeric(frame, c)
        badc = ~np.isfinite(v)
        if badc.any():
            out.append(
                DatasetViolation(
                    rows(badc),
                    c,
                    f"covariate {c} must be a number on every record (impute missing values before fitting)",
                )
            )
        huge = np.isfinite(v) & (np.abs(v) >= MAX_FIT_MAGNITUDE)
        if huge.any():
            out.append(DatasetViolation(rows(huge), c, _too_large(c, v[huge])))
    for p in spec.parameters:
        for e in p.covariates:
            if e.covariate not in frame:
                continue
            badp, message = e.relation_model.invalid_values(e, _numeric(frame, e.covariate), p.name)
            if badp.any():
                out.append(DatasetViolation(rows(badp), e.covariate, message))
    return out, info


_STD = {"ID", "TIME", "DV", "MDV", "EVID", "AMT", "RATE", "II", "ADDL", "SS", "CMT", "DVID", "BLQ", "LLOQ", "OCC"}


def build_problem(
    data,
    spec: PopulationModel,
    *,
    solver="auto",
    require_observations: bool = True,
    report_unused: bool = True,
    ignore=None,
    accept=None,
    rows=None,
) -> Problem:
    """Bind a population model to a NONMEM-format dataset.

    Parameters
    ----------
    data
        CSV path or DataFrame: NONMEM columns (``ID, TIME, DV, MDV, EVID, AMT, RATE, II, ADDL, SS, CMT``),
        ``DVID`` when there are several observation types, optional ``BLQ`` (0/1) and ``LLOQ`` (DV units),
        ``OCC`` (1, 2, ...) for inter-occasion variability, and the covariate columns the model uses.
    spec
        The population model.
    solver
        ``"auto"`` (exact for linear models), ``"analytic"`` or ``"ode"``.
    require_observations
        Refuse a dataset without observation records (a forecast from the prior alone may have none).
    report_unused
        Add a note (``Problem.notes``) naming the records with a DV value that are not fitted
        (:func:`unused_records`); a caller that adds records of its own reports on the user's rows itself.
    ignore, accept
        NONMEM ``$DATA`` record selection (:func:`pkpd.data.filter_records`): ``IGNORE`` characters or
        conditions (``"(DV.EQ.0)"``), ``ACCEPT`` conditions (``"(DVID.EQ.1)"``). Whatever they are, the
        rows flagged ``C`` in a column named ``C`` (NONMEM's comment column) and the rows whose first
        column starts with ``#`` are not fitted. ``Problem.notes`` says how many rows were left out.
    rows
        1-based row number in the user's file of each row of ``data`` (a caller that filtered or added rows
        itself); default ``1..len(data)``. Error messages and notes name these rows.

    Raises
    ------
    DatasetError
        Every violation found (engine checks and fit checks together), with 1-based row numbers of the
        file (rows left out by IGNORE/ACCEPT counted).
    RecordFilterError
        A malformed IGNORE/ACCEPT option, or a condition the dataset cannot be tested on (named).
    ModelSpecError
        On a model that does not fit the data (e.g. an output expression naming an unknown quantity).
    """
    from ..data import filter_records, read_dataset, renumber

    source = str(data) if not isinstance(data, pd.DataFrame) else None
    raw = read_dataset(data) if not isinstance(data, pd.DataFrame) else data.reset_index(drop=True)
    kept = filter_records(raw, ignore, accept, source=source)
    file_rows = kept.rows if rows is None else np.asarray(rows, np.int64)[kept.rows - 1]
    try:
        prob = _build_problem(
            kept.frame,
            spec,
            solver=solver,
            require_observations=require_observations,
            report_unused=report_unused,
            source=source,
            file_rows=file_rows,
        )
    except DatasetError as exc:  # row numbers of the file, not of the rows kept
        if np.array_equal(file_rows, np.arange(1, len(file_rows) + 1)):
            raise
        raise renumber(exc, file_rows, source) from None
    message = kept.message()
    if message:
        prob.notes.insert(0, message)
    return prob


def _build_problem(
    raw: pd.DataFrame,
    spec: PopulationModel,
    *,
    solver,
    require_observations: bool,
    report_unused: bool,
    source: str | None,
    file_rows: np.ndarray,
) -> Problem:
    """:func:`build_problem` on the rows kept (``file_rows``: their 1-based rows in the file, for notes)."""
    model = get_model(spec.structure)
    violations, info = _fit_checks(raw, spec, model)
    # the engine's own validation, with a parameter block of the initial typical values
    block: dict[str, Any] = {p.name: p.estimate for p in spec.parameters}
    block.update(spec.derived)
    try:
        prep = prepare(raw, model, ParameterSpec(block, interpolation=spec.interpolation))
    except DatasetError as exc:
        raise DatasetError(list(exc.violations) + violations, source=source) from None
    if violations:
        raise DatasetError(violations, source=source)
    if require_observations and not info["is_obs"].any():
        raise DatasetError(
            [DatasetViolation((), "DV", "the dataset has no observation records (EVID 0, MDV 0)")], source=source
        )
    frame = prep.frame
    rm = prep.row_map
    Np, R = prep.rec["time"].shape

    def pad(values: np.ndarray) -> np.ndarray:
        arr = np.zeros((Np, R))
        arr[rm[:, 0], rm[:, 1]] = values
        last = np.bincount(rm[:, 0], minlength=Np) - 1
        j = np.arange(R)[None, :]
        src = np.minimum(j, last[:, None])
        return np.take_along_axis(arr, src, axis=1)

    ident = frame["ID"].to_numpy()
    ids, first = np.unique(ident, return_index=True)
    ids = ident[np.sort(first)]
    id_index = {v: i for i, v in enumerate(ids)}
    row_id = np.array([id_index[v] for v in ident])
    id_of_pseudo = np.zeros(Np, int)
    id_of_pseudo[rm[:, 0]] = row_id

    # covariates (padded per record) and covariate-relation data
    cov_np = {c: pad(_numeric(frame, c)) for c in spec.covariate_columns()}
    effects = []
    coef = 0
    for p in spec.parameters:
        lst = []
        for e in p.covariates:
            ncoef = len(e.coefficient_names(p.name))
            sl = slice(coef, coef + ncoef)
            coef += ncoef
            rel = e.relation_model
            lst.append((rel, sl, jnp.asarray(rel.data(e, cov_np, (Np, R), p.name))))
        effects.append(lst)
    eta_names = spec.eta_names()
    eta_index = np.array([eta_names.index(p.name) if p.name in eta_names else -1 for p in spec.parameters])
    iov_names = list(spec.iov)
    iov_index = np.array([iov_names.index(p.name) if p.name in iov_names else -1 for p in spec.parameters])

    occ = None
    n_occ = 0
    if spec.iov:
        occ_raw = _numeric(frame, "OCC").astype(int)
        n_occ = int(occ_raw.max())
        occ = pad(occ_raw - 1).astype(np.int32)

    # time-varying parameters: a relation covariate or the occasion changing within a pseudo-subject
    def varies(a):
        return bool(np.any(a != a[:, :1]))

    tv = prep.layout.time_varying or any(varies(cov_np[c]) for c in cov_np) or (occ is not None and varies(occ))
    lay = replace(prep.layout, time_varying=True) if tv and not prep.layout.time_varying else prep.layout
    solv = resolve_solver(solver, model)
    if isinstance(solv, ODE):  # Laplace and MAP need forward-over-reverse derivatives through the ODE solve
        solv = replace(solv, adjoint="direct")
    sched = None
    if prep.static_schedule:
        from ..engine import compute_schedule

        sched = compute_schedule(model, lay, solv, prep.rec, prep.dose, prep.ss, prep.theta)
    arrays = {"rec": prep.rec, "dose": prep.dose, "ss": prep.ss, "sched": sched}

    # observations
    is_obs = info["is_obs"]
    oi = np.nonzero(is_obs)[0]
    typ = info["type"][oi]
    dv = _numeric(frame, "DV")[oi]
    blq = info["blq"][oi]
    lloq = info["lloq"][oi]
    pk = _make_packer(spec)
    # DV and LLOQ on the likelihood scale of each record's error model (log DV for log-normal types);
    # BLQ records have no DV (0), records without an LLOQ have 0
    y = np.zeros(len(oi))
    lloq_t = np.zeros(len(oi))
    for t, o in enumerate(spec.observations):
        mine = typ == t
        y[mine] = np.nan_to_num(o.error_model.to_scale(dv[mine]))
        lloq_t[mine] = np.nan_to_num(o.error_model.to_scale(lloq[mine]))
    y = np.where(blq, 0.0, y)
    obs = {
        "pseudo": rm[oi, 0],
        "slot": rm[oi, 1],
        "id": row_id[oi],
        "row": oi,
        "dv": dv,
        "y": y,
        "type": typ,
        "blq": blq,
        "lloq": lloq,
        "lloq_t": lloq_t,
        "time": frame["TIME"].to_numpy(float)[oi],
    }
    obs_ids = set(obs["id"].tolist())
    notes = []
    _, unused_note = unused_records(raw, file_rows) if report_unused else (None, None)
    if unused_note:
        notes.append(unused_note)
    no_obs = [ids[i] for i in range(len(ids)) if i not in obs_ids]
    if no_obs:
        notes.append(
            f"{len(no_obs)} subject(s) have no observations (IDs {', '.join(map(str, no_obs[:10]))}); "
            "their random effects are at the prior mean"
        )
    prob = Problem.create(
        spec=spec,
        model=model,
        solver=solv,
        layout=lay,
        arrays=arrays,
        packer=pk,
        ids=ids,
        id_of_pseudo=id_of_pseudo,
        cov={c: jnp.asarray(v) for c, v in cov_np.items()},
        effects=effects,
        eta_index=eta_index,
        iov_index=iov_index,
        occ=occ,
        n_occ=n_occ,
        obs=obs,
        frame=frame,
        row_map=rm,
        notes=notes,
        data=raw,
        data_rows=file_rows,
    )
    # an output expression must reference known quantities: evaluate once at the initial estimates
    try:
        f, _ = _predict_jit(prob, jnp.asarray(pk.init_full), jnp.zeros((prob.n_id, prob.n_eta)))
    except ModelSpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - turn an expression failure into a model error
        raise ModelSpecError(f"cannot evaluate the observation outputs of the model: {exc}") from None
    f = np.asarray(f)
    with np.errstate(all="ignore"):  # a log-normal type whose prediction is 0 (no log)
        zero_log = ~obs["blq"] & np.isfinite(f) & ~np.isfinite(prob.to_scale(f))
    if zero_log.any():
        raise DatasetError(
            [
                DatasetViolation(
                    tuple(int(r) + 1 for r in obs["row"][zero_log]),
                    "DV",
                    "these records have a log-normal error model but the model predicts 0 "
                    "there whatever the parameters (e.g. samples before the first dose): "
                    "set MDV = 1, or flag them BLQ = 1 with an LLOQ",
                )
            ],
            source=source,
        )
    if not np.all(np.isfinite(f)):
        bad = file_rows[obs["row"][~np.isfinite(np.asarray(f))]]
        prob.notes.append(
            f"predictions at the initial estimates are not finite on rows {', '.join(map(str, bad[:10]))}"
        )
    return prob
