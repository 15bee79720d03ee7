"""Full Bayesian estimation of a population model: NUTS (vectorized chains) and SVI.

Both methods work on the same NumPyro model, built from a :class:`~pkpd.fit.problem.Problem`:

* **Population parameters** are sampled on their *estimation scale* (the scale of
  :class:`~pkpd.fit.problem.Packer`): typical values as ``log(x - lower)`` (so a Normal prior there is a
  log-normal prior on the typical value), logit within finite bounds, or unconstrained; covariate
  coefficients likewise by relation (power exponent and linear/exponential slopes unconstrained,
  categorical and indicator factors on the log scale, activity-score fractions on the logit scale).
  Fixed parameters stay at their values in the model file.
* **Random effects** are non-centred: for subject ``i``, ``eta_i = L z_i`` with ``z_i ~ Normal(0, I)``,
  where ``L`` is the Cholesky factor of the block-diagonal covariance of the subject's IIV etas and IOV
  kappas (:meth:`Problem.chol_full`). Each IIV block's factor is built from the standard deviations of
  its etas and an LKJ correlation factor, ``L_b = diag(sd) L_corr``, which is the lower Cholesky factor
  of ``Omega_b = diag(sd) C diag(sd)``; the packer's omega entries (Cholesky factor, log diagonal) are
  set from it exactly. IOV standard deviations give the IOV variances ``sd^2``.
* **Residual terms** (additive SD, proportional CV, log-normal sigma) are sampled on their natural scale.
* The **likelihood** is ``sum_i log p(y_i | eta_i, theta)`` from :meth:`Problem.loglik_id` (Gaussian, M3
  for BLQ records). Where it is not finite (the ODE solver failed, a prediction is ``nan`` or ``inf``,
  a parameter expression is undefined) the log density is ``-inf``: the point is rejected.

Default priors (weakly informative; :func:`default_priors` returns them, :func:`describe_priors` prints
them; ``u0`` is the initial estimate of the model file on the estimation scale):

* typical value on the log scale: ``log(x - lower) ~ Normal(u0, 2)`` (log-normal; 95 % within a factor
  ``e^3.9 ~ 50`` of the initial estimate);
* typical value or coefficient on the logit scale (finite bounds, activity-score fraction):
  ``logit ~ Normal(u0, 1.5)`` (close to uniform on the interval);
* unconstrained typical value or coefficient (power exponent, linear or exponential slope):
  ``x ~ Normal(u0, 2 max(1, |u0|))``;
* categorical or indicator factor: ``log(factor) ~ Normal(log f0, 2)``;
* IIV standard deviation: ``sd ~ HalfNormal(max(1, 2 sd0))`` (``sd0``: initial SD; a log-scale SD for
  log-normal IIV), ``HalfNormal(5 sd0)`` in parameter units for additive IIV;
* IIV correlation of a block of ``k > 1`` etas: ``L_corr ~ LKJCholesky(k, concentration 2)``;
* IOV standard deviation: ``sd ~ HalfNormal(max(0.5, 2 sd0))`` (additive IIV type: ``HalfNormal(5 sd0)``);
* residual term: ``HalfNormal(5 x initial value)``;
* random effects: ``z_i ~ Normal(0, I)``, ``eta_i = L z_i``.

Users override any of them with ``priors={key: prior}``: the keys are the names of
:func:`default_priors` (``"CL"``, ``"CL~WT(power)"``, ``"omega(CL)"``, ``"corr(KA,CL)"``, ``"iov(CL)"``,
``"conc.additive"``...), the values NumPyro distributions of the sampled quantity (estimation-scale
value for typical values and coefficients, standard deviation for omega and IOV entries, natural value
for residual terms, correlation Cholesky factor for ``corr(...)``), or shorthands: a pair
``(loc, scale)`` for a Normal on the estimation scale, a number ``s`` for ``HalfNormal(s)`` (SDs and
residual terms) or for the LKJ concentration (``corr``).

Sampling with NUTS uses NumPyro's NUTS kernel (``numpyro.infer.hmc.hmc``) and runs all chains at once
in one ``jax.vmap`` (what NumPyro's ``chain_method="vectorized"`` does), with NumPyro's warm-up
(dual-averaging step size, windowed diagonal or dense mass-matrix adaptation). The iterations run in
compiled chunks of 50 (progress bar between chunks), and the compiled program is cached per model
structure, data shapes and settings: a second fit of the same model to a dataset of the same shape
does not compile again.

Rejected points are counted by a host call-back that sees every log-density evaluation and records the
distinct parameter points whose log-likelihood was not finite (:class:`BayesFit.diagnostics`,
``n_rejected_warmup`` and ``n_rejected``). Every such point ends its NUTS trajectory as a divergent
transition and is never a draw. With vectorized chains the trajectory loops of all chains run in lock
step, and a chain whose trajectory has ended computes (and discards) integration steps until every
chain's trajectory has ended; non-finite points met by those discarded steps are counted too, so the
count is an upper bound on the rejections the sampler itself made (exact with one chain). The
divergent transitions are counted as well (``n_divergent``), and the draws are checked to have a finite
log-likelihood (``n_nonfinite_draws``, 0 by construction). For SVI, optimisation steps whose ELBO or
gradient was not finite are skipped and counted (``n_rejected_steps``), and draws of the fitted
approximation whose log-likelihood is not finite are dropped and counted (``n_rejected``).

Speed (Theoph, 12 subjects, 30 sampled scalars, 4 chains x (1000 + 1000), the 2-core development
machine shared with other work): compilation 30-40 s once per model structure, then about 15-23 s
of sampling; most of it is spent in the likelihood (about 0.15 ms per evaluation of the value and
gradient for the 4 chains). The defaults that make this possible: a dense mass matrix for small
problems and a warm-up tree depth of 6 (:func:`fit_nuts`), and the chains' shared iteration counter
kept out of the vectorization (see ``_nuts_program``).

References
----------
Hoffman MD, Gelman A. The No-U-Turn sampler: adaptively setting path lengths in Hamiltonian Monte
Carlo. J Mach Learn Res 2014;15:1593-1623.
Betancourt M, Girolami M. Hamiltonian Monte Carlo for hierarchical models (non-centred
parameterization). In: Current Trends in Bayesian Methodology with Applications, CRC Press 2015.
Lewandowski D, Kurowicka D, Joe H. Generating random correlation matrices based on vines and extended
onion method. J Multivar Anal 2009;100:1989-2001 (LKJ distribution).
Kucukelbir A, Tran D, Ranganath R, Gelman A, Blei DM. Automatic differentiation variational inference.
J Mach Learn Res 2017;18:1-45 (SVI with Gaussian guides).
Vehtari A, Gelman A, Simpson D, Carpenter B, Buerkner PC. Rank-normalization, folding, and
localization: an improved R-hat for assessing convergence of MCMC. Bayesian Anal 2021;16:667-718.
Kumar R, Carroll C, Hartikainen A, Martin O. ArviZ a unified library for exploratory analysis of
Bayesian models in Python. J Open Source Softw 2019;4:1143.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions.transforms import biject_to
from numpyro.infer.hmc import HMCState, hmc
from numpyro.infer.hmc_util import HMCAdaptState
from numpyro.infer.util import potential_energy

from ..errors import ModelSpecError
from ..xla import jit
from .error_models import TERMS
from .laplace import FitError
from .options import NutsOptions, SviOptions
from .problem import Problem

__all__ = [
    "BayesFit",
    "NutsOptions",
    "SviOptions",
    "default_priors",
    "describe_priors",
    "fit_nuts",
    "fit_svi",
    "load_netcdf",
]


# ---------------------------------------------------------------------------------------------------
# the sampled sites and their map to the packer's u_full


@dataclass(frozen=True)
class _Block:
    """One free IIV block: eta names, offset in the IIV vector, and the packer entries it sets."""

    names: tuple[str, ...]
    offset: int
    entries: tuple[tuple[int, int, int], ...]  # (packer index, local row, local col)
    additive: tuple[bool, ...]  # random effect in parameter units (iiv_type additive): SD in those units

    @property
    def label(self) -> str:
        return f"corr({','.join(self.names)})"


@dataclass(frozen=True)
class _Layout:
    """Static description of the model's sampled sites (hashable: part of the compile-cache key)."""

    pop: tuple[tuple[str, int], ...]  # free typical values and coefficients: (packer name, index)
    blocks: tuple[_Block, ...]  # free IIV blocks
    iov: tuple[tuple[str, int, int], ...]  # (packer name, packer index, position among IOV terms)
    sigma: tuple[tuple[str, int, int], ...]  # (packer name, packer index, position among residual terms)
    K: int  # random effects per subject
    n_id: int

    def site_keys(self) -> list[tuple[str, str]]:
        """``(site name, prior key)`` of every site except ``z``, in sampling order."""
        out = [(f"pop:{n}", n) for n, _ in self.pop]
        for b in self.blocks:
            out += [(f"sd:{n}", f"omega({n})") for n in b.names]
            if len(b.names) > 1:
                out.append((f"corr:{b.label}", b.label))
        out += [(f"iov_sd:{n}", n) for n, _, _ in self.iov]
        out += [(f"sigma:{n}", n) for n, _, _ in self.sigma]
        return out


def _layout(prob: Problem) -> _Layout:
    pk = prob.packer
    spec = prob.spec
    idx = {n: i for i, n in enumerate(pk.names)}
    pop = tuple((n, i) for i, (n, k) in enumerate(zip(pk.names, pk.kinds)) if k in ("theta", "beta") and pk.free[i])
    additive_of = {p.name: p.iiv_model.in_parameter_units for p in spec.parameters}
    blocks = []
    off = 0
    for names, _full, _fixed in spec.iiv_blocks():
        k = len(names)
        entries = []
        for i in range(k):
            for j in range(i + 1):
                nm = f"omega({names[i]})" if i == j else f"omega({names[i]},{names[j]})"
                entries.append((idx[nm], i, j))
        if all(pk.free[e[0]] for e in entries):
            blocks.append(_Block(tuple(names), off, tuple(entries), tuple(additive_of[n] for n in names)))
        off += k
    iov_names = [n for n, k in zip(pk.names, pk.kinds) if k == "iov"]
    iov = tuple((n, idx[n], j) for j, n in enumerate(iov_names) if pk.free[idx[n]])
    sig_names = [n for n, k in zip(pk.names, pk.kinds) if k == "sigma"]
    sigma = tuple((n, idx[n], j) for j, n in enumerate(sig_names) if pk.free[idx[n]])
    return _Layout(pop, tuple(blocks), iov, sigma, int(prob.n_eta), int(prob.n_id))


def _assemble(prob: Problem, layout: _Layout, v: Mapping[str, Any]):
    """``(u_full, eta)`` from sampled site values (constrained scale): the exact map of the module
    docstring. Works on single values (no batch dimension)."""
    u = jnp.asarray(prob.packer.init_full)
    idx, vals = [], []
    for n, i in layout.pop:
        idx.append(i)
        vals.append(jnp.asarray(v[f"pop:{n}"], u.dtype))
    for b in layout.blocks:
        sd = jnp.stack([jnp.asarray(v[f"sd:{n}"], u.dtype) for n in b.names])
        k = len(b.names)
        Lc = v[f"corr:{b.label}"] if k > 1 else jnp.ones((1, 1), u.dtype)
        for pi, i, j in b.entries:
            idx.append(pi)
            vals.append(jnp.log(sd[i]) + jnp.log(Lc[i, i]) if i == j else sd[i] * Lc[i, j])
    for n, i, _ in layout.iov:
        idx.append(i)
        vals.append(2.0 * jnp.log(jnp.asarray(v[f"iov_sd:{n}"], u.dtype)))
    for n, i, _ in layout.sigma:
        idx.append(i)
        vals.append(jnp.log(jnp.asarray(v[f"sigma:{n}"], u.dtype)))
    if idx:
        u = u.at[np.array(idx)].set(jnp.stack(vals))
    if layout.K:
        Lf = prob.chol_full(prob.packer.natural(u))
        eta = v["z"] @ Lf.T
    else:
        eta = jnp.zeros((layout.n_id, 0), u.dtype)
    return u, eta


@jit
def _natural_and_chol(prob: Problem, u_full):
    nat = prob.packer.natural(u_full)
    return nat, prob.chol_full(nat)


def _natural_np(prob: Problem, u_full) -> tuple[dict, np.ndarray]:
    """Natural parameters (numpy) and the Cholesky factor of the random-effect covariance at ``u_full``."""
    nat, Lf = jax.device_get(_natural_and_chol(prob, jnp.asarray(u_full, jnp.float64)))
    return {k: np.asarray(v) for k, v in nat.items()}, np.asarray(Lf)


def _site_values(prob: Problem, layout: _Layout, u_full, eta=None) -> dict[str, np.ndarray]:
    """Inverse of :func:`_assemble`: constrained site values reproducing ``(u_full, eta)``."""
    u_full = np.asarray(u_full, float)
    nat, Lf = _natural_np(prob, u_full)
    out: dict[str, np.ndarray] = {}
    for n, i in layout.pop:
        out[f"pop:{n}"] = np.asarray(u_full[i])
    for b in layout.blocks:
        k = len(b.names)
        cov = nat["omega"][b.offset : b.offset + k, b.offset : b.offset + k]
        sd = np.sqrt(np.diag(cov))
        for n, s in zip(b.names, sd):
            out[f"sd:{n}"] = np.asarray(s)
        if k > 1:
            out[f"corr:{b.label}"] = np.linalg.cholesky(cov / np.outer(sd, sd))
    for n, _, j in layout.iov:
        out[f"iov_sd:{n}"] = np.asarray(math.sqrt(nat["iov"][j]))
    for n, _, j in layout.sigma:
        out[f"sigma:{n}"] = np.asarray(nat["sigma"][j])
    if layout.K:
        if eta is None:
            out["z"] = np.zeros((layout.n_id, layout.K))
        else:
            out["z"] = np.linalg.solve(Lf, np.asarray(eta, float).T).T
    return out


# ---------------------------------------------------------------------------------------------------
# priors


def default_priors(prob: Problem) -> dict[str, dist.Distribution]:
    """The default (weakly informative) prior of every sampled quantity of ``prob``.

    Parameters
    ----------
    prob
        Model bound to data (:func:`pkpd.fit.build_problem`).

    Returns
    -------
    dict
        Prior key -> NumPyro distribution, in sampling order. Keys and the quantity each distribution
        is over: typical-value and coefficient names (value on the estimation scale: ``log(x - lower)``,
        logit, or unconstrained), ``omega(NAME)`` (standard deviation of ``eta(NAME)``),
        ``corr(A,B,...)`` (Cholesky factor of the correlation of a block), IOV names ``iov(NAME)``
        (standard deviation of the kappas), residual-term names such as ``conc.additive`` (natural
        value: SD in DV units, CV as a fraction, log-scale sigma). The table in the module docstring
        gives the rules.
    """
    lay = _layout(prob)
    pk = prob.packer
    nat, _ = _natural_np(prob, pk.init_full)
    out: dict[str, dist.Distribution] = {}
    for n, i in lay.pop:
        u0 = float(pk.init_full[i])
        code = int(pk.code[i])
        scale = 2.0 if code == 1 else 1.5 if code == 2 else 2.0 * max(1.0, abs(u0))
        out[n] = dist.Normal(u0, scale)
    for b in lay.blocks:
        sd0 = np.sqrt(np.diag(nat["omega"])[b.offset : b.offset + len(b.names)])
        for n, s0, add in zip(b.names, sd0, b.additive):
            out[f"omega({n})"] = dist.HalfNormal(float(5.0 * s0 if add else max(1.0, 2.0 * s0)))
        if len(b.names) > 1:
            out[b.label] = dist.LKJCholesky(len(b.names), 2.0)
    additive_of = {p.name: p.iiv_model.in_parameter_units for p in prob.spec.parameters}
    for n, _, j in lay.iov:
        s0 = math.sqrt(float(nat["iov"][j]))
        add = additive_of.get(n[4:-1], False)
        out[n] = dist.HalfNormal(5.0 * s0 if add else max(0.5, 2.0 * s0))
    for n, _, j in lay.sigma:
        out[n] = dist.HalfNormal(5.0 * float(nat["sigma"][j]))
    return out


def _resolve_priors(prob: Problem, priors: Mapping[str, Any] | None) -> tuple[dict, set[str]]:
    """Defaults updated by the user's priors (shorthands expanded); returns (priors, user keys)."""
    out = default_priors(prob)
    user: set[str] = set()
    if not priors:
        return out, user
    pk = prob.packer
    for key, val in priors.items():
        if key not in out:
            fixed = [n for n, f in zip(pk.names, pk.free) if not f]
            hint = f" ({key} is fixed in the model file)" if key in fixed or f"omega({key})" in fixed else ""
            raise ModelSpecError(
                f"priors: {key!r} is not a sampled quantity of this model{hint}; known keys: {', '.join(out)}"
            )
        if isinstance(val, dist.Distribution):
            d = val
        elif key.startswith("corr("):
            if not isinstance(val, (int, float)) or val <= 0:
                raise ModelSpecError(
                    f"priors[{key!r}]: give an LKJ concentration > 0 or a dist.LKJCholesky distribution"
                )
            d = dist.LKJCholesky(out[key].dimension, float(val))
        elif isinstance(val, (tuple, list)) and len(val) == 2 and key in dict(_layout(prob).pop):
            if not float(val[1]) > 0:
                raise ModelSpecError(f"priors[{key!r}]: the Normal scale must be > 0, got {val[1]!r}")
            d = dist.Normal(float(val[0]), float(val[1]))
        elif isinstance(val, (int, float)) and key not in dict(_layout(prob).pop):
            if not val > 0:
                raise ModelSpecError(f"priors[{key!r}]: the HalfNormal scale must be > 0, got {val!r}")
            d = dist.HalfNormal(float(val))
        else:
            raise ModelSpecError(
                f"priors[{key!r}] = {val!r}: give a numpyro distribution, (loc, scale) of a "
                "Normal on the estimation scale for typical values and coefficients, or a "
                "HalfNormal scale for SDs and residual terms"
            )
        if d.event_shape != out[key].event_shape or d.batch_shape != ():
            raise ModelSpecError(
                f"priors[{key!r}]: the distribution must have event shape "
                f"{out[key].event_shape} and no batch shape, got {d.event_shape} / "
                f"{d.batch_shape}"
            )
        if key in dict(_layout(prob).pop) and d.support is not dist.constraints.real:
            raise ModelSpecError(
                f"priors[{key!r}]: typical values and coefficients are sampled on their "
                f"estimation scale (any real number); give a distribution on the real line "
                f"such as dist.Normal (got support {d.support})"
            )
        out[key] = d
        user.add(key)
    return out, user


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _dist_text(d: dist.Distribution) -> str:
    name = type(d).__name__
    if isinstance(d, dist.LKJCholesky):
        return f"LKJCholesky(dim {d.dimension}, concentration {_fmt(float(d.concentration))})"
    if isinstance(d, dist.HalfNormal):
        return f"HalfNormal({_fmt(float(d.scale))})"
    if isinstance(d, (dist.Normal, dist.LogNormal, dist.StudentT, dist.Cauchy)):
        extra = f"df {_fmt(float(d.df))}, " if isinstance(d, dist.StudentT) else ""
        return f"{name}({extra}{_fmt(float(d.loc))}, {_fmt(float(d.scale))})"
    params = []
    for k in getattr(d, "arg_constraints", {}):
        v = getattr(d, k, None)
        if v is not None and np.size(v) == 1:
            params.append(f"{k} {_fmt(float(np.asarray(v)))}")
    return f"{name}({', '.join(params)})"


def _setup(prob: Problem, priors: Mapping[str, Any] | None):
    """What both samplers start from: the site layout, the resolved priors in site order, their text and
    the per-site transforms."""
    layout = _layout(prob)
    pri_map, _user = _resolve_priors(prob, priors)
    pri = tuple(pri_map[k] for _, k in layout.site_keys())
    return layout, pri, describe_priors(prob, priors), _site_transforms(prob, layout, pri)


def describe_priors(prob: Problem, priors: Mapping[str, Any] | None = None) -> str:
    """Text description of the priors of a Bayesian fit (for reports).

    Parameters
    ----------
    prob
        Model bound to data.
    priors
        The user's overrides (as given to :func:`fit_nuts` / :func:`fit_svi`), or ``None``.

    Returns
    -------
    str
        One line per sampled quantity saying which scale the prior is on and whether it is the default
        or the user's, then the random-effect parameterization.
    """
    res, user = _resolve_priors(prob, priors)
    lay = _layout(prob)
    pk = prob.packer
    pop = dict(lay.pop)
    width = max([len(k) for k in res] + [8])
    lines = ["Priors (weakly informative defaults of pkpd.fit.bayes unless marked [user]):"]
    for key, d in res.items():
        if key in pop:
            i = pop[key]
            code = int(pk.code[i])
            lo, hi = pk.lower[i], pk.upper[i]
            kind = "typical value" if pk.kinds[i] == "theta" else "coefficient"
            if code == 1:
                q = f"log({key}{'' if lo == 0 else f' - {_fmt(lo)}'})"
            elif code == 2:
                q = f"logit(({key} - {_fmt(lo)}) / {_fmt(hi - lo)})"
            else:
                q = key
            what = f"{kind}: {q} ~ {_dist_text(d)}"
            if code == 1 and isinstance(d, dist.Normal) and lo == 0:
                what += (
                    f"  (log-normal; median {_fmt(math.exp(float(d.loc)))}, 95 % within x/ "
                    f"{_fmt(math.exp(1.96 * float(d.scale)))})"
                )
        elif key.startswith("omega("):
            what = f"SD of eta{key[5:]} ~ {_dist_text(d)}"
        elif key.startswith("corr("):
            what = f"correlation Cholesky factor of eta{key[4:]} ~ {_dist_text(d)}"
        elif key.startswith("iov("):
            what = f"SD of the occasion kappas of {key[4:-1]} ~ {_dist_text(d)}"
        else:
            term = key.rsplit(".", 1)[-1]
            unit = TERMS[term].prior_unit if term in TERMS else ""
            what = f"residual {term} ({unit}) ~ {_dist_text(d)}"
        lines.append(f"  {key:<{width}}  {what}{'  [user]' if key in user else ''}")
    fixed = [n for n, f in zip(pk.names, pk.free) if not f]
    if fixed:
        lines.append(f"  fixed at the model file's values: {', '.join(fixed)}")
    if lay.K:
        lines.append(
            f"  random effects (non-centred): eta_i = L z_i, z_i ~ Normal(0, I_{lay.K}), L = Cholesky "
            "factor of diag(Omega, IOV)"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# the NumPyro model


class _RejectionCounter:
    """Host-side record of the distinct parameter points whose log-likelihood was not finite."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[float] = set()

    def reset(self) -> None:
        with self._lock:
            self._seen = set()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._seen)

    def __call__(self, ok, fingerprint):
        ok = np.asarray(ok, bool)
        if not ok.all():
            fp = np.broadcast_to(np.asarray(fingerprint, np.float64), ok.shape)[~ok]
            fp = fp[np.isfinite(fp)]  # a non-finite point comes from a rejected one; it is no new proposal
            with self._lock:
                self._seen.update(fp.tolist())
        return np.zeros(ok.shape, np.float64)


_COUNTER = _RejectionCounter()


def _host_count(ok, fingerprint):
    return jax.pure_callback(
        _COUNTER, jax.ShapeDtypeStruct(jnp.shape(ok), jnp.float64), ok, fingerprint, vmap_method="expand_dims"
    )


@jax.custom_batching.custom_vmap
def _count_nonfinite(ok, fingerprint):
    """0.0, telling the host counter about a non-finite point; the host is called only when needed."""
    return jax.lax.cond(ok, lambda a, b: jnp.zeros((), jnp.float64), _host_count, ok, fingerprint)


@_count_nonfinite.def_vmap
def _count_nonfinite_vmap(axis_size, in_batched, ok, fingerprint):
    ok = ok if in_batched[0] else jnp.broadcast_to(ok, (axis_size,))
    fingerprint = fingerprint if in_batched[1] else jnp.broadcast_to(fingerprint, (axis_size,))
    # one predicate for the whole batch (all chains): the call-back runs only if some chain needs it
    out = jax.lax.cond(jnp.all(ok), lambda a, b: jnp.zeros((axis_size,), jnp.float64), _host_count, ok, fingerprint)
    return out, True


def _counted(ll, ok, fingerprint):
    """``ll``, with the host counter told whether it is finite (differentiable in ``ll``)."""
    return ll + _count_nonfinite(jax.lax.stop_gradient(ok), jax.lax.stop_gradient(fingerprint))


def _fingerprint(u_full, z):
    """A scalar that differs between distinct parameter points (random projection, fixed weights)."""
    w = np.random.default_rng(20240611).standard_normal(u_full.shape[0])
    fp = jnp.dot(u_full, jnp.asarray(w))
    if z is not None and z.size:
        wz = np.random.default_rng(20240612).standard_normal(z.shape)
        fp = fp + jnp.sum(z * jnp.asarray(wz))
    return fp


def _model(prob: Problem, priors: tuple, layout: _Layout, likelihood: bool = True, count: bool = False):
    """The NumPyro model (see the module docstring); ``priors`` aligned with ``layout.site_keys()``."""
    v: dict[str, Any] = {}
    for (site, _key), d in zip(layout.site_keys(), priors):
        v[site] = numpyro.sample(site, d)
    if layout.K:
        v["z"] = numpyro.sample("z", dist.Normal(0.0, 1.0).expand((layout.n_id, layout.K)).to_event(2))
    u_full, eta = _assemble(prob, layout, v)
    if likelihood:
        ll = jnp.sum(prob.loglik_id(u_full, eta))
        ok = jnp.isfinite(ll)
        if count:
            ll = _counted(ll, ok, _fingerprint(u_full, v.get("z")))
        numpyro.factor("loglik", jnp.where(ok, ll, -jnp.inf))


def _site_transforms(prob: Problem, layout: _Layout, priors: tuple) -> dict:
    """Constraining bijection of every latent site (from an abstract trace of the model: nothing runs)."""
    found: dict = {}

    def probe(prob):  # priors closed over: their supports (e.g. Uniform bounds) stay concrete
        tr = numpyro.handlers.trace(numpyro.handlers.seed(_model, 0)).get_trace(prob, priors, layout, likelihood=False)
        found.update({k: s["fn"].support for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]})
        return 0.0

    jax.eval_shape(probe, prob)
    return {k: biject_to(sup) for k, sup in found.items()}


# ---------------------------------------------------------------------------------------------------
# results


@dataclass
class BayesFit:
    """Outcome of :func:`fit_nuts` or :func:`fit_svi` (a :class:`~pkpd.fit.result.PosteriorDraws`).

    Attributes
    ----------
    method
        ``"nuts"`` or ``"svi"``.
    names
        Names of the free parameters (packer order), the last axis of ``u_draws``.
    u_draws
        Free parameters on the estimation scale, shape ``(chains, draws, n_free)`` (SVI: one chain).
    u_full_draws
        Every parameter on the estimation scale (fixed ones constant), ``(chains, draws, n_all)``.
    eta_draws
        Random effects, ``(chains, draws, n_id, K)`` (IIV etas, then IOV kappas per occasion).
    idata
        ArviZ ``InferenceData``: ``posterior`` with every free parameter by its packer name in natural
        units (typical values, covariate coefficients, ``omega(...)`` variances and covariances,
        ``iov(...)`` variances, residual terms; a ``/`` in a name, which HDF5 forbids, becomes ``\u2215``)
        and ``eta`` (dims ``ID``, ``eta_name``);
        ``log_likelihood`` (``subject``: ``log p(y_i | eta_i, theta)`` per subject); ``sample_stats``
        (NUTS: ``diverging``, ``lp``, ``energy``, ``n_steps``, ``acceptance_rate``, ``step_size``);
        ``observed_data`` (``DV``). Attributes hold the method, settings, timings, counts and priors.
    diagnostics
        ``rhat`` and ``ess_bulk`` (dicts by parameter name; ``None`` for SVI), ``rhat_eta_max``,
        ``ess_bulk_eta_min``, ``n_divergent`` and ``n_divergent_warmup`` (transitions), ``n_rejected``
        and ``n_rejected_warmup`` (distinct points with a non-finite log-likelihood; see the module
        docstring for what is counted), ``n_nonfinite_draws``; NUTS: ``mean_accept_prob``, ``step_size``
        (adapted, per chain), ``mean_tree_steps`` and ``warmup_n_steps`` (integration steps per warm-up
        iteration, ``(chains, num_warmup)``); SVI: ``elbo`` (loss trace: negative ELBO per step, nats),
        ``final_loss``, ``n_rejected_steps``.
    times
        Seconds: ``compile_s`` (tracing and compilation, 0 when the cached program was reused),
        ``warmup_s`` and ``sampling_s`` (NUTS) or ``optimization_s`` and ``draws_s`` (SVI),
        ``postprocess_s``, ``total_s``.
    priors
        Text of :func:`describe_priors`.
    settings
        The arguments of the run.
    """

    method: str
    names: tuple[str, ...]
    u_draws: np.ndarray
    u_full_draws: np.ndarray
    eta_draws: np.ndarray
    idata: Any
    diagnostics: dict
    times: dict
    priors: str
    settings: dict = field(default_factory=dict)

    def save_netcdf(self, path: str | Path) -> Path:
        """Write :attr:`idata` to a NetCDF-4 file (``h5netcdf`` engine); returns the path."""
        path = Path(path)
        self.idata.to_netcdf(str(path))
        return path

    def summary(self):
        """Posterior summary of the free parameters in natural units (pandas DataFrame): mean, sd,
        2.5 %, 50 %, 97.5 % quantiles, R-hat and bulk ESS (NUTS)."""
        import pandas as pd

        rows = []
        post = self.idata.posterior
        for n in self.names:
            x = np.asarray(post[_var_name(n)]).reshape(-1)
            q = np.quantile(x, [0.025, 0.5, 0.975])
            rhat = self.diagnostics["rhat"].get(n) if self.diagnostics.get("rhat") else None
            ess = self.diagnostics["ess_bulk"].get(n) if self.diagnostics.get("ess_bulk") else None
            rows.append(
                {
                    "parameter": n,
                    "mean": x.mean(),
                    "sd": x.std(ddof=1) if x.size > 1 else math.nan,
                    "q2.5": q[0],
                    "median": q[1],
                    "q97.5": q[2],
                    "rhat": math.nan if rhat is None else rhat,
                    "ess_bulk": math.nan if ess is None else ess,
                }
            )
        return pd.DataFrame(rows).set_index("parameter")


def load_netcdf(path: str | Path):
    """Read an InferenceData written by :meth:`BayesFit.save_netcdf`."""
    az = _arviz()
    return az.from_netcdf(str(path))


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def _var_name(name: str) -> str:
    """NetCDF-safe variable name (HDF5 names cannot contain '/')."""
    return name.replace("/", "\u2215")


def _natural_by_name(prob: Problem, u_full_draws: np.ndarray) -> dict[str, np.ndarray]:
    """Every free parameter in natural units by packer name, arrays shaped like the leading axes."""
    pk = prob.packer
    lead = u_full_draws.shape[:-1]
    flat = jnp.asarray(u_full_draws.reshape(-1, u_full_draws.shape[-1]))
    nat = {k: np.asarray(v) for k, v in jax.device_get(_natural_draws(prob, flat)).items()}
    out = {}
    it = ib = io = isg = 0
    om_i = 0
    for i, (n, k) in enumerate(zip(pk.names, pk.kinds)):
        if k == "theta":
            val = nat["theta"][:, it]
            it += 1
        elif k == "beta":
            val = nat["beta"][:, ib]
            ib += 1
        elif k == "omega":
            r, c = pk.omega_pos[om_i]
            om_i += 1
            val = nat["omega"][:, r, c]
        elif k == "iov":
            val = nat["iov"][:, io]
            io += 1
        else:
            val = nat["sigma"][:, isg]
            isg += 1
        if pk.free[i]:
            out[n] = val.reshape(lead)
    return out


@jit
def _natural_draws(prob: Problem, u_flat):
    return jax.vmap(prob.packer.natural)(u_flat)


_post_jit: dict = {}


def _postprocess_fn(batch: int):
    if batch not in _post_jit:

        def per_draw(prob, u_full, eta):
            ll = prob.loglik_id(u_full, eta)
            return ll

        def run(prob, u_flat, eta_flat):
            return jax.lax.map(lambda a: per_draw(prob, a[0], a[1]), (u_flat, eta_flat), batch_size=batch)

        _post_jit[batch] = jit(run)
    return _post_jit[batch]


def _loglik_draws(prob: Problem, u_flat: np.ndarray, eta_flat: np.ndarray) -> np.ndarray:
    """``log p(y_i | eta_i, theta)`` per draw and subject, (n_draws, n_id)."""
    fn = _postprocess_fn(min(256, len(u_flat)))
    return np.asarray(fn(prob, jnp.asarray(u_flat), jnp.asarray(eta_flat)))


def _assemble_draws(prob: Problem, layout: _Layout, draws: dict, lead: tuple[int, ...]):
    """``u_full`` (lead + (n_all,)) and ``eta`` (lead + (n_id, K)) from constrained site draws."""
    flat = {k: jnp.asarray(v).reshape((-1,) + v.shape[len(lead) :]) for k, v in draws.items()}
    fn = _assemble_jit()
    u, eta = fn(prob, layout, flat)
    return (np.asarray(u).reshape(lead + (u.shape[-1],)), np.asarray(eta).reshape(lead + tuple(eta.shape[1:])))


@functools.lru_cache(maxsize=1)
def _assemble_jit():
    return jit(lambda prob, layout, flat: jax.vmap(lambda v: _assemble(prob, layout, v))(flat), static_argnums=1)


def _build_result(
    prob: Problem,
    layout: _Layout,
    method: str,
    u_full: np.ndarray,
    eta: np.ndarray,
    stats: dict | None,
    diagnostics: dict,
    times: dict,
    prior_text: str,
    settings: dict,
    log_likelihood: bool,
    ll: np.ndarray | None = None,
) -> BayesFit:
    az = _arviz()
    t0 = time.perf_counter()
    C, D = u_full.shape[:2]
    pk = prob.packer
    nat = _natural_by_name(prob, u_full)
    posterior = {_var_name(n): v for n, v in nat.items()}
    dims: dict[str, list[str]] = {}
    coords: dict[str, Any] = {"ID": np.asarray(prob.ids)}
    if layout.K:
        posterior["eta"] = eta
        dims["eta"] = ["ID", "eta_name"]
        coords["eta_name"] = prob.eta_labels()
    groups: dict[str, Any] = {"posterior": posterior}
    if log_likelihood and ll is None and C * D:
        ll = _loglik_draws(prob, u_full.reshape(C * D, -1), eta.reshape((C * D,) + eta.shape[2:])).reshape(C, D, -1)
    if log_likelihood and ll is not None:
        groups["log_likelihood"] = {"subject": ll}
        dims["subject"] = ["ID"]
    obs_rows = np.asarray(prob.obs["row"]) + 1
    coords["obs"] = obs_rows
    groups["observed_data"] = {"DV": np.asarray(prob.obs["dv"], float)}
    dims["DV"] = ["obs"]
    if stats is not None:
        groups["sample_stats"] = stats
    attrs = {
        "inference_library": "numpyro",
        "inference_library_version": numpyro.__version__,
        "created_by": "pkpd.fit.bayes",
        "method": method,
        "priors": prior_text,
        "model_structure": prob.spec.structure,
    }
    for k, v in settings.items():
        attrs[f"setting_{k}"] = v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else str(v)
    for k, v in times.items():
        attrs[f"time_{k}"] = float(v)
    for k in (
        "n_divergent",
        "n_divergent_warmup",
        "n_rejected",
        "n_rejected_warmup",
        "n_nonfinite_draws",
        "n_rejected_steps",
    ):
        if k in diagnostics and diagnostics[k] is not None:
            attrs[k] = int(diagnostics[k])
    idata = az.from_dict(**groups, coords=coords, dims=dims, attrs=attrs)
    free_names = tuple(n for n, f in zip(pk.names, pk.free) if f)
    if method == "nuts" and D > 1:
        sub = idata.posterior[[_var_name(n) for n in free_names]]
        rhat = az.rhat(sub)
        ess = az.ess(sub, method="bulk")
        diagnostics["rhat"] = {n: float(rhat[_var_name(n)]) for n in free_names}
        diagnostics["ess_bulk"] = {n: float(ess[_var_name(n)]) for n in free_names}
        if layout.K:
            r_eta = np.asarray(az.rhat(idata.posterior[["eta"]])["eta"])
            e_eta = np.asarray(az.ess(idata.posterior[["eta"]], method="bulk")["eta"])
            diagnostics["rhat_eta_max"] = float(np.nanmax(r_eta))
            diagnostics["ess_bulk_eta_min"] = float(np.nanmin(e_eta))
    else:
        diagnostics.setdefault("rhat", None)
        diagnostics.setdefault("ess_bulk", None)
    if ll is not None:
        diagnostics["n_nonfinite_draws"] = max(
            diagnostics.get("n_nonfinite_draws", 0), int(np.sum(~np.isfinite(ll.sum(-1))))
        )
        idata.attrs["n_nonfinite_draws"] = diagnostics["n_nonfinite_draws"]
    times["postprocess_s"] = time.perf_counter() - t0
    times["total_s"] = sum(v for k, v in times.items() if k != "total_s")
    idata.attrs["time_postprocess_s"] = times["postprocess_s"]
    idata.attrs["time_total_s"] = times["total_s"]
    free = pk.free
    return BayesFit(
        method=method,
        names=free_names,
        u_draws=u_full[..., free],
        u_full_draws=u_full,
        eta_draws=eta,
        idata=idata,
        diagnostics=diagnostics,
        times=times,
        priors=prior_text,
        settings=settings,
    )


# ---------------------------------------------------------------------------------------------------
# NUTS


_CHUNK = 50  # iterations per compiled call (progress granularity)


@functools.lru_cache(maxsize=8)
def _nuts_program(
    layout: _Layout, num_warmup: int, target_accept: float, max_tree_depth, dense_mass, count: bool = True
):
    """Compiled ``init`` and ``chunk`` functions of vectorized NUTS (cached per structure and settings)."""

    def pe_gen(prob, priors):
        return lambda params: potential_energy(_model, (prob, priors, layout), {"count": count}, params)

    init_kernel, sample_kernel = hmc(potential_fn_gen=pe_gen, algo="NUTS")

    def init_one(prob, priors, z0, key):
        return init_kernel(
            z0,
            num_warmup,
            target_accept_prob=target_accept,
            max_tree_depth=max_tree_depth,
            dense_mass=dense_mass,
            model_args=(prob, priors),
            rng_key=key,
        )

    def chunk_one(prob, priors, state, n):
        def rec(st):
            return {
                "z": st.z,
                "diverging": st.diverging,
                "potential_energy": st.potential_energy,
                "energy": st.energy,
                "num_steps": st.num_steps,
                "accept_prob": st.accept_prob,
                "step_size": st.adapt_state.step_size,
            }

        proto = rec(state)
        buf = jax.tree_util.tree_map(lambda x: jnp.zeros((_CHUNK,) + jnp.shape(x), jnp.result_type(x)), proto)

        def body(i, carry):
            st, b = carry
            st = sample_kernel(st, model_args=(prob, priors))
            b = jax.tree_util.tree_map(lambda a, x: jax.lax.dynamic_update_index_in_dim(a, x, i, 0), b, rec(st))
            return st, b

        return jax.lax.fori_loop(0, n, body, (state, buf))

    # Chains are vectorized with jax.vmap. The iteration counter and the adaptation-window index are the
    # same for every chain: keeping them unbatched keeps NumPyro's `cond`s on them real branches. Were
    # they batched, vmap would turn each `cond` into a `select` that computes both branches at every
    # iteration (the end-of-window mass-matrix update, and the whole adaptation after warm-up), which
    # costs 10-20 ms per iteration with a dense mass matrix.
    ax = HMCState(
        i=None,
        z=0,
        z_grad=0,
        potential_energy=0,
        energy=0,
        r=0,
        trajectory_length=None,
        num_steps=0,
        accept_prob=0,
        mean_accept_prob=0,
        diverging=0,
        adapt_state=HMCAdaptState(
            step_size=0,
            inverse_mass_matrix=0,
            mass_matrix_sqrt=0,
            mass_matrix_sqrt_inv=0,
            ss_state=0,
            mm_state=0,
            window_idx=None,
            rng_key=0,
        ),
        rng_key=0,
    )
    init_fn = jit(jax.vmap(init_one, in_axes=(None, None, 0, 0), out_axes=ax))
    chunk_fn = jit(jax.vmap(chunk_one, in_axes=(None, None, ax, None), out_axes=(ax, 0)))
    return init_fn, chunk_fn


def _initial_points(
    prob: Problem, layout: _Layout, transforms: dict, init_u, init_eta, num_chains: int, jitter: float, seed: int
) -> tuple[dict, dict]:
    """Unconstrained initial point and ``num_chains`` jittered copies of it (leading chain axis)."""
    pk = prob.packer
    if init_u is None:
        u_full = pk.init_full.copy()
    else:
        init_u = np.asarray(init_u, float)
        if init_u.shape == (pk.n_free,):
            u_full = np.asarray(pk.full(jnp.asarray(init_u)))
        elif init_u.shape == pk.init_full.shape:
            u_full = init_u.copy()
        else:
            raise FitError(
                f"init_u has shape {init_u.shape}; give the free parameters ({pk.n_free},) or all "
                f"parameters ({pk.init_full.size},) on the estimation scale"
            )
        if not np.all(np.isfinite(u_full)):
            raise FitError("init_u has non-finite entries")
    if init_eta is not None:
        init_eta = np.asarray(init_eta, float)
        if init_eta.shape != (prob.n_id, prob.n_eta):
            raise FitError(f"init_eta has shape {init_eta.shape}; expected ({prob.n_id}, {prob.n_eta})")
    vals = _site_values(prob, layout, u_full, init_eta)
    base = {k: np.asarray(transforms[k].inv(jnp.asarray(v))) for k, v in vals.items()}
    rng = np.random.default_rng(seed)
    jit = {k: v[None] + jitter * rng.standard_normal((num_chains,) + v.shape) for k, v in base.items()}
    return base, jit


_NOT_FINITE_AT_INIT = (
    "the log posterior is not finite at the initial point: check the initial estimates "
    "(init_u), units of AMT and DV, the error model (a proportional error on a zero "
    "prediction), and that each prior covers its initial value"
)


def _progress(progress: bool, total: int, label: str):
    if not progress:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )
    p.start()
    p.add_task(label, total=total, info="")
    return p


def _progress_info(phase: str, div_warmup: int, div_sampling: int, rejected: int) -> str:
    """The NUTS progress line's text: warm-up and sampling divergences counted apart (warm-up divergences
    are expected while the step size adapts and are not a diagnostic of the draws; sampling ones are)."""
    return f"{phase}; warm-up divergences {div_warmup}, sampling divergences {div_sampling}; rejected points {rejected}"


def fit_nuts(
    prob: Problem,
    *,
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    priors: Mapping[str, Any] | None = None,
    progress: bool = True,
    target_accept: float = 0.8,
    max_tree_depth: int | tuple[int, int] = (6, 10),
    dense_mass: bool | str = "auto",
    init_u=None,
    init_eta=None,
    init_jitter: float = 0.1,
    log_likelihood: bool = True,
) -> BayesFit:
    """Sample the posterior of a population model with NUTS, all chains vectorized.

    Parameters
    ----------
    prob
        Model bound to data (:func:`pkpd.fit.build_problem`).
    num_chains
        Number of chains, run at once (``jax.vmap``; NumPyro's ``chain_method="vectorized"``).
    num_warmup, num_samples
        Warm-up (adaptation; discarded) and kept iterations per chain.
    seed
        Random seed (chains' initial jitter and sampling).
    priors
        Overrides of :func:`default_priors` (format in the module docstring), or ``None``.
    progress
        Show a progress bar (one bar for all chains, with the divergences so far).
    target_accept
        Target acceptance probability of the step-size adaptation (raise to 0.9-0.99 on divergences).
    max_tree_depth
        Maximum NUTS tree depth (at most ``2**depth - 1`` integration steps per iteration), or a pair
        ``(warm-up depth, sampling depth)``. The default ``(6, 10)`` caps the warm-up trajectories at 63
        steps: early in the warm-up, before the mass matrix is adapted, trajectories would otherwise run
        to hundreds of steps (on Theoph that is two thirds of the run time) without improving the
        adaptation much; sampling uses the usual depth 10.
    dense_mass
        Adapt a dense mass matrix (``True``), a diagonal one (``False``), or ``"auto"``: dense when the
        number of sampled scalars (population parameters plus ``n_id * K``) is at most 400. With the
        non-centred random effects, the posterior of each ``z_i`` is correlated with its block's SDs when
        the subject's data are informative; a dense matrix absorbs that (on Theoph it cuts the
        integration steps per iteration from about 60 to 18).
    init_u
        Initial population parameters on the estimation scale, free ``(n_free,)`` or all ``(n_all,)``
        (e.g. ``LaplaceFit.u_full``); default: the model file's initial estimates.
    init_eta
        Initial random effects ``(n_id, K)`` (e.g. ``LaplaceFit.eta``); default 0.
    init_jitter
        SD of the Normal jitter added to each chain's initial point on the unconstrained scale.
    log_likelihood
        Store ``log p(y_i | eta_i, theta)`` per subject and draw in ``idata.log_likelihood``.

    Returns
    -------
    BayesFit

    Raises
    ------
    FitError
        When the log posterior is not finite at the initial point.
    ModelSpecError
        On an invalid prior override.

    Notes
    -----
    The compiled sampler is cached per model structure, data shapes and settings (``num_warmup``,
    ``target_accept``, ``max_tree_depth``, ``dense_mass``): later runs report ``compile_s`` near 0.
    Not thread-safe (the rejection counter is process-wide). The settings as one typed value:
    :class:`~pkpd.fit.options.NutsOptions` (``fit_nuts(prob, **options.keywords())``).
    """
    if num_chains < 1 or num_samples < 1 or num_warmup < 0:
        raise FitError("num_chains and num_samples must be >= 1 and num_warmup >= 0")
    t_start = time.perf_counter()
    layout, pri, prior_text, transforms = _setup(prob, priors)
    base, z0 = _initial_points(prob, layout, transforms, init_u, init_eta, num_chains, init_jitter, seed)
    k_chain = jax.random.key(seed)
    t_prep = time.perf_counter() - t_start

    n_latent = (
        len(layout.pop)
        + sum(len(b.names) * (len(b.names) + 1) // 2 for b in layout.blocks)
        + len(layout.iov)
        + len(layout.sigma)
        + layout.n_id * layout.K
    )
    if dense_mass == "auto":
        dense_mass = n_latent <= 400
    elif not isinstance(dense_mass, bool):
        raise FitError(f"dense_mass must be True, False or 'auto', got {dense_mass!r}")
    mtd = tuple(int(d) for d in max_tree_depth) if isinstance(max_tree_depth, (tuple, list)) else int(max_tree_depth)
    init_fn, chunk_fn = _nuts_program(layout, int(num_warmup), float(target_accept), mtd, bool(dense_mass))
    keys = jax.random.split(k_chain, num_chains)
    t0 = time.perf_counter()
    _COUNTER.reset()
    state = init_fn(prob, pri, {k: jnp.asarray(v) for k, v in z0.items()}, keys)
    bad = ~np.isfinite(np.asarray(state.potential_energy))
    if bad.any():  # a jittered start outside the region where the model is defined: use the unjittered one
        for k in z0:
            z0[k][bad] = base[k]
        state = init_fn(prob, pri, {k: jnp.asarray(v) for k, v in z0.items()}, keys)
        if not np.all(np.isfinite(np.asarray(state.potential_energy))):
            raise FitError(_NOT_FINITE_AT_INIT)
    jax.block_until_ready(state)
    _, _ = jax.block_until_ready(chunk_fn(prob, pri, state, 0))  # compiles (no iteration run)
    t_compile = time.perf_counter() - t0

    bar = _progress(progress, num_warmup + num_samples, f"NUTS {num_chains} chains")
    rec: list[dict] = []
    div_warm = 0
    rej_warm = 0
    warm_steps: list[np.ndarray] = []
    t_warm = t_samp = 0.0
    try:
        for phase, total in (("warmup", num_warmup), ("sampling", num_samples)):
            t1 = time.perf_counter()
            done = 0
            while done < total:
                n = min(_CHUNK, total - done)
                state, buf = chunk_fn(prob, pri, state, n)
                buf = jax.device_get(buf)
                buf = jax.tree_util.tree_map(lambda a, n=n: a[:, :n], buf)
                done += n
                if phase == "warmup":
                    div_warm += int(np.sum(buf["diverging"]))
                    warm_steps.append(buf["num_steps"])
                else:
                    rec.append(buf)
                if bar is not None:
                    div_samp = sum(int(np.sum(b["diverging"])) for b in rec)
                    bar.update(
                        bar.task_ids[0], advance=n, info=_progress_info(phase, div_warm, div_samp, _COUNTER.count)
                    )
            if phase == "warmup":
                t_warm = time.perf_counter() - t1
                rej_warm = _COUNTER.count
            else:
                t_samp = time.perf_counter() - t1
    finally:
        if bar is not None:
            bar.stop()
    rej_total = _COUNTER.count
    samples = {k: np.concatenate([b[k] for b in rec], axis=1) for k in rec[0] if k != "z"}
    zs = {k: np.concatenate([b["z"][k] for b in rec], axis=1) for k in rec[0]["z"]}
    constrained = {k: np.asarray(transforms[k](jnp.asarray(v))) for k, v in zs.items()}
    u_full, eta = _assemble_draws(prob, layout, constrained, (num_chains, num_samples))
    stats = {
        "diverging": samples["diverging"].astype(bool),
        "lp": -samples["potential_energy"],
        "energy": samples["energy"],
        "n_steps": samples["num_steps"],
        "acceptance_rate": samples["accept_prob"],
        "step_size": samples["step_size"],
    }
    diagnostics = {
        "n_divergent": int(np.sum(samples["diverging"])),
        "n_divergent_warmup": div_warm,
        "n_nonfinite_draws": int(np.sum(~np.isfinite(samples["potential_energy"]))),
        "n_rejected": rej_total - rej_warm,
        "n_rejected_warmup": rej_warm,
        "mean_accept_prob": float(np.mean(samples["accept_prob"])),
        "step_size": [float(s) for s in np.asarray(state.adapt_state.step_size)],
        "mean_tree_steps": float(np.mean(samples["num_steps"])),
        "warmup_n_steps": (np.concatenate(warm_steps, axis=1) if warm_steps else np.zeros((num_chains, 0), int)),
    }
    times = {"prepare_s": t_prep, "compile_s": t_compile, "warmup_s": t_warm, "sampling_s": t_samp}
    settings = {
        "num_chains": num_chains,
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "seed": seed,
        "target_accept": target_accept,
        "max_tree_depth": str(mtd),
        "dense_mass": bool(dense_mass),
        "chain_method": "vectorized",
    }
    return _build_result(
        prob, layout, "nuts", u_full, eta, stats, diagnostics, times, prior_text, settings, log_likelihood
    )


# ---------------------------------------------------------------------------------------------------
# SVI


def _guide_sites(layout: _Layout, priors: tuple) -> list:
    """``(site, bijection to its support, unconstrained shape)`` of every latent site, in model order."""
    out = []
    for (site, _key), d in zip(layout.site_keys(), priors):
        tr = biject_to(d.support)
        out.append((site, tr, tuple(tr.inverse_shape(d.event_shape))))
    if layout.K:
        out.append(("z", biject_to(dist.constraints.real), (layout.n_id, layout.K)))
    return out


def _make_guide(layout: _Layout, kind: str):
    """Gaussian guide on the unconstrained scale of every latent site: mean-field (``normal``: one loc and
    one scale per scalar) or full-rank (``mvn``: one loc vector, one lower Cholesky factor)."""

    def guide(prob, priors, likelihood=True, count=False):
        sites = _guide_sites(layout, priors)
        if kind == "normal":
            for name, tr, shape in sites:
                loc = numpyro.param(f"{name}_loc", jnp.zeros(shape))
                scale = numpyro.param(
                    f"{name}_scale", jnp.full(shape, 0.1), constraint=dist.constraints.softplus_positive
                )
                base = dist.Normal(loc, scale).to_event(len(shape))
                numpyro.sample(name, dist.TransformedDistribution(base, tr))
            return
        sizes = [int(np.prod(shape)) for _, _, shape in sites]
        n = sum(sizes)
        loc = numpyro.param("loc", jnp.zeros(n))
        L = numpyro.param("scale_tril", 0.1 * jnp.eye(n), constraint=dist.constraints.scaled_unit_lower_cholesky)
        flat = numpyro.sample("_flat", dist.MultivariateNormal(loc, scale_tril=L), infer={"is_auxiliary": True})
        pos = 0
        for (name, tr, shape), m in zip(sites, sizes):
            x = flat[pos : pos + m].reshape(shape)
            pos += m
            y = tr(x)
            # density of the constrained value: q(x) / |dy/dx|
            log_density = -jnp.sum(tr.log_abs_det_jacobian(x, y))
            numpyro.sample(name, dist.Delta(y, log_density=log_density, event_dim=jnp.ndim(y)))

    return guide


@functools.lru_cache(maxsize=8)
def _svi_program(layout: _Layout, guide_kind: str, learning_rate: float):
    """SVI object and compiled ``init``/``chunk``/``draws`` functions (cached per structure and settings;
    the initial location is set in the optimiser state, not compiled in)."""
    from numpyro.infer import SVI, Predictive, Trace_ELBO

    model = functools.partial(_model, layout=layout)
    guide = _make_guide(layout, guide_kind)
    svi = SVI(model, guide, numpyro.optim.Adam(learning_rate), Trace_ELBO())

    def chunk(prob, priors, state, n):
        buf = jnp.zeros((_CHUNK,))

        def body(i, carry):
            st, b = carry
            st, loss = svi.stable_update(st, prob, priors)
            return st, b.at[i].set(loss)

        return jax.lax.fori_loop(0, n, body, (state, buf))

    def draws(params, key, prob, priors, n):
        return Predictive(guide, params=params, num_samples=n)(key, prob, priors)

    # the initial parameters need only the sites' shapes: no likelihood in that trace (less to compile)
    init = jit(lambda key, prob, priors: svi.init(key, prob, priors, likelihood=False))
    return svi, init, jit(chunk), jit(draws, static_argnums=4)


def _svi_start(svi, layout: _Layout, priors: tuple, state, z0: dict):
    """The SVI state with the guide's location moved to the unconstrained initial point ``z0``."""
    from numpyro.infer.svi import SVIState

    params = dict(svi.optim.get_params(state.optim_state))
    if "loc" in params:  # full-rank guide: one flat vector, sites in model order
        flat = jnp.concatenate([jnp.reshape(jnp.asarray(z0[name]), -1) for name, _, _ in _guide_sites(layout, priors)])
        params["loc"] = jnp.asarray(flat, params["loc"].dtype)
    else:
        for k, v in z0.items():
            params[f"{k}_loc"] = jnp.asarray(v, params[f"{k}_loc"].dtype).reshape(params[f"{k}_loc"].shape)
    return SVIState(svi.optim.init(params), state.mutable_state, state.rng_key)


def fit_svi(
    prob: Problem,
    *,
    num_steps: int = 2000,
    learning_rate: float = 0.01,
    num_draws: int = 1000,
    seed: int = 0,
    guide: str = "normal",
    priors: Mapping[str, Any] | None = None,
    progress: bool = True,
    init_u=None,
    init_eta=None,
    log_likelihood: bool = True,
) -> BayesFit:
    """Approximate the posterior of a population model by stochastic variational inference.

    The guide is a Gaussian on the unconstrained scale of every latent quantity (population parameters
    and the non-centred random effects ``z``), mapped to each quantity's support by the same bijections
    as NUTS uses: mean-field (``guide="normal"``, one location and one scale per scalar, as NumPyro's
    ``AutoNormal``) or full-rank (``guide="mvn"``, one location vector and one lower Cholesky factor,
    as ``AutoMultivariateNormal``; its cost grows with the square of the number of latent scalars).
    It starts at the initial estimates with scales 0.1. The ELBO (one particle per step) is maximised
    with Adam; steps whose ELBO or gradient is not finite are skipped (counted as
    ``n_rejected_steps``). Draws of the fitted guide whose log-likelihood is not finite are dropped
    (``n_rejected``). A mean-field guide underestimates posterior spread (on Theoph the SD of the
    typical values by a factor 2-6 against NUTS); use its medians as point estimates, NUTS for
    intervals.

    Parameters
    ----------
    prob
        Model bound to data (:func:`pkpd.fit.build_problem`).
    num_steps
        Optimisation steps.
    learning_rate
        Adam step size (on the unconstrained scale).
    num_draws
        Draws from the fitted guide kept in the result.
    seed
        Random seed.
    guide
        ``"normal"`` (mean-field) or ``"mvn"`` (full-rank).
    priors
        Overrides of :func:`default_priors` (format in the module docstring).
    progress
        Show a progress bar with the current loss (negative ELBO).
    init_u, init_eta
        Initial location of the guide (estimation-scale parameters, random effects), as in
        :func:`fit_nuts`; default: the model file's initial estimates and 0.
    log_likelihood
        Store the per-subject log-likelihood of each draw in ``idata.log_likelihood``.

    Returns
    -------
    BayesFit
        One "chain" of ``num_draws`` independent draws (less the rejected ones); ``diagnostics["elbo"]``
        is the loss trace (negative ELBO, nats, per step).

    Notes
    -----
    The settings as one typed value: :class:`~pkpd.fit.options.SviOptions`
    (``fit_svi(prob, **options.keywords())``).
    """
    if guide not in ("normal", "mvn"):
        raise FitError(f"guide must be 'normal' or 'mvn', got {guide!r}")
    if num_steps < 1 or num_draws < 1:
        raise FitError("num_steps and num_draws must be >= 1")
    t_start = time.perf_counter()
    layout, pri, prior_text, transforms = _setup(prob, priors)
    k_svi, k_draw = jax.random.split(jax.random.key(seed))
    z0, _ = _initial_points(prob, layout, transforms, init_u, init_eta, 1, 0.0, seed)
    svi, init_fn, chunk_fn, draw_fn = _svi_program(layout, guide, float(learning_rate))
    t_prep = time.perf_counter() - t_start

    t0 = time.perf_counter()
    state = _svi_start(svi, layout, pri, init_fn(k_svi, prob, pri), z0)
    jax.block_until_ready(chunk_fn(prob, pri, state, 0))
    t_compile = time.perf_counter() - t0

    bar = _progress(progress, num_steps, f"SVI ({guide})")
    losses = []
    t1 = time.perf_counter()
    try:
        done = 0
        while done < num_steps:
            n = min(_CHUNK, num_steps - done)
            state, buf = chunk_fn(prob, pri, state, n)
            losses.append(np.asarray(buf)[:n])
            done += n
            if bar is not None:
                bar.update(bar.task_ids[0], advance=n, info=f"loss {losses[-1][-1]:.4g}")
    finally:
        if bar is not None:
            bar.stop()
    t_opt = time.perf_counter() - t1
    elbo = np.concatenate(losses)
    if not np.any(np.isfinite(elbo)):
        raise FitError("SVI: the ELBO was never finite; " + _NOT_FINITE_AT_INIT)
    params = svi.get_params(state)
    t2 = time.perf_counter()
    raw = draw_fn(params, k_draw, prob, pri, int(num_draws))
    raw = {k: np.asarray(v)[None] for k, v in raw.items() if k in transforms}
    u_full, eta = _assemble_draws(prob, layout, raw, (1, num_draws))
    t_draw = time.perf_counter() - t2
    # drop draws whose log-likelihood is not finite
    ll = _loglik_draws(prob, u_full[0], eta[0])
    good = np.isfinite(ll.sum(-1)) & np.all(np.isfinite(u_full[0]), axis=-1)
    n_bad = int(np.sum(~good))
    if not good.any():
        raise FitError(
            "every draw of the fitted SVI guide has a non-finite log-likelihood: the optimisation "
            "diverged; lower learning_rate or start from a Laplace fit (init_u)"
        )
    u_full, eta, ll = u_full[:, good], eta[:, good], ll[None, good]
    diagnostics = {
        "elbo": elbo,
        "n_rejected_steps": int(np.sum(~np.isfinite(elbo))),
        "n_rejected": n_bad,
        "final_loss": float(np.nanmean(elbo[-max(1, len(elbo) // 20) :])),
    }
    times = {"prepare_s": t_prep, "compile_s": t_compile, "optimization_s": t_opt, "draws_s": t_draw}
    settings = {
        "num_steps": num_steps,
        "learning_rate": learning_rate,
        "num_draws": num_draws,
        "seed": seed,
        "guide": guide,
    }
    return _build_result(
        prob, layout, "svi", u_full, eta, None, diagnostics, times, prior_text, settings, log_likelihood, ll
    )
