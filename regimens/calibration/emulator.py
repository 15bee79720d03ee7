"""Gaussian-process emulators of the simulated target statistics.

One emulator per target statistic (an arm's log mean opioid use, log SD, log median or mean pain) as a
function of the standardized inputs ``x = [(z - prior mean) / prior SD, u / TRIAL_EFFECT_SD,
w / TRIAL_EFFECT_SD]`` (the unconstrained outcome-model parameters and the arm's two trial effects): a linear mean (least squares) plus a
zero-mean GP with an anisotropic (ARD) squared-exponential kernel and a nugget for the simulation noise
(finite virtual populations). Hyperparameters maximize the log marginal likelihood (L-BFGS on a subset of
at most ``fit_points`` points); the GP is then conditioned on every training point. The prediction is the
posterior mean (differentiable, used inside the NumPyro likelihood); its accuracy is measured on held-out
design points (:meth:`Emulator.check`) and the held-out error enters the likelihood as a variance.

References: Rasmussen CE, Williams CKI. Gaussian Processes for Machine Learning. MIT Press 2006, ch. 2 and
5; Kennedy MC, O'Hagan A. Bayesian calibration of computer models. J R Stat Soc B 2001;63:425-464.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from pkpd.outcome import OUTCOME_PARAMETERS

from .design import TRIAL_EFFECT_SD

__all__ = ["Emulator", "fit_emulator", "standardize"]

_LOC = np.array([p.prior_loc_scale[0] for p in OUTCOME_PARAMETERS])
_SCALE = np.array([p.prior_loc_scale[1] for p in OUTCOME_PARAMETERS])


def standardize(z, u, w, xp=np):
    """Emulator inputs from unconstrained parameters ``z`` (..., P) and trial effects ``u``, ``w`` (...,)."""
    return xp.concatenate(
        [(z - _LOC) / _SCALE, (u / TRIAL_EFFECT_SD)[..., None], (w / TRIAL_EFFECT_SD)[..., None]], axis=-1
    )


def _kernel(a, b, log_ls, log_sf2):
    d = (a[:, None, :] - b[None, :, :]) / jnp.exp(log_ls)
    return jnp.exp(log_sf2 - 0.5 * jnp.sum(d * d, axis=-1))


def _design(x):
    return jnp.concatenate([jnp.ones(x.shape[:-1] + (1,)), x], axis=-1)


def _nlml(h, x, r):
    """Negative log marginal likelihood of residuals ``r`` at ``x`` (hyperparameters ``h``)."""
    n, d = x.shape
    log_ls, log_sf2, log_sn2 = h[:d], h[d], h[d + 1]
    K = _kernel(x, x, log_ls, log_sf2) + (jnp.exp(log_sn2) + 1e-8) * jnp.eye(n)
    L = jnp.linalg.cholesky(K)
    a = jax.scipy.linalg.cho_solve((L, True), r)
    # weak priors keep the length scales and the nugget away from degenerate values
    prior = 0.5 * jnp.sum(((log_ls - jnp.log(2.0)) / 1.5) ** 2) + 0.5 * ((log_sn2 - jnp.log(1e-3)) / 3.0) ** 2
    return 0.5 * r @ a + jnp.sum(jnp.log(jnp.diag(L))) + 0.5 * n * jnp.log(2 * jnp.pi) + prior


_nlml_vg = jax.jit(jax.value_and_grad(_nlml))


@dataclass
class Emulator:
    """Fitted emulators of ``J`` targets (stacked): training inputs (J, N, D), weights, hyperparameters,
    linear-mean coefficients, output scaling, and the held-out error (``rmse``, per target, in the target's
    units; 0 until :meth:`check`)."""

    X: np.ndarray
    alpha: np.ndarray
    log_ls: np.ndarray
    log_sf2: np.ndarray
    beta: np.ndarray
    y_mean: np.ndarray
    y_sd: np.ndarray
    rmse: np.ndarray

    def predict(self, x):
        """Predicted targets (J,) at standardized inputs ``x`` (J, D) (one input per target: its own trial
        effect). JAX-traceable."""
        xs = jnp.asarray(x)
        k = jax.vmap(lambda xi, Xi, ls, sf: _kernel(xi[None, :], Xi, ls, sf)[0])(
            xs, jnp.asarray(self.X), jnp.asarray(self.log_ls), jnp.asarray(self.log_sf2)
        )
        lin = jnp.sum(_design(xs) * jnp.asarray(self.beta), axis=-1)
        gp = jnp.sum(k * jnp.asarray(self.alpha), axis=-1)
        return jnp.asarray(self.y_mean) + jnp.asarray(self.y_sd) * (lin + gp)

    def predict_np(self, x) -> np.ndarray:
        """:meth:`predict` for a batch (B, J, D) as numpy."""
        f = jax.jit(jax.vmap(self.predict))
        return np.asarray(f(jnp.asarray(x)))

    def check(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Held-out accuracy at inputs ``x`` (B, J, D) and simulated ``y`` (B, J): stores and returns the RMSE
        per target, and the R^2."""
        pred = self.predict_np(x)
        err = pred - y
        self.rmse = np.sqrt(np.mean(err**2, axis=0))
        r2 = 1.0 - np.sum(err**2, 0) / np.maximum(np.sum((y - y.mean(0)) ** 2, 0), 1e-30)
        return {"rmse": self.rmse, "r2": r2}


def fit_emulator(x: np.ndarray, y: np.ndarray, *, fit_points: int = 400, seed: int = 0, progress=None) -> Emulator:
    """Fit one GP per target.

    Parameters
    ----------
    x
        Standardized inputs (N, J, D): each target's input (its trial's effect differs).
    y
        Simulated targets (N, J).
    fit_points
        Points used to fit the hyperparameters (a random subset); the GP is conditioned on all N.
    """
    from scipy.optimize import minimize

    N, J, D = x.shape
    rng = np.random.default_rng(seed)
    sub = rng.permutation(N)[: min(fit_points, N)]
    Xs, alphas, lss, sfs, betas, ym, ys = [], [], [], [], [], [], []
    for j in range(J):
        xj, yj = x[:, j, :], y[:, j]
        m, s = float(yj.mean()), float(yj.std() or 1.0)
        t = (yj - m) / s
        A = np.concatenate([np.ones((N, 1)), xj], axis=1)
        beta, *_ = np.linalg.lstsq(A, t, rcond=None)
        r = t - A @ beta
        h0 = np.concatenate([np.full(D, np.log(2.0)), [np.log(max(r.var(), 1e-4))], [np.log(1e-3)]])
        xf, rf = jnp.asarray(xj[sub]), jnp.asarray(r[sub])

        def f(h):
            v, g = _nlml_vg(jnp.asarray(h), xf, rf)
            return float(v), np.asarray(g, float)

        res = minimize(f, h0, jac=True, method="L-BFGS-B", options={"maxiter": 200})
        h = res.x
        log_ls, log_sf2, log_sn2 = h[:D], h[D], h[D + 1]
        K = np.array(_kernel(jnp.asarray(xj), jnp.asarray(xj), jnp.asarray(log_ls), log_sf2))
        K[np.diag_indices(N)] += np.exp(log_sn2) + 1e-8
        L = np.linalg.cholesky(K)
        a = np.linalg.solve(L.T, np.linalg.solve(L, r))
        Xs.append(xj)
        alphas.append(a)
        lss.append(log_ls)
        sfs.append(log_sf2)
        betas.append(beta)
        ym.append(m)
        ys.append(s)
        if progress is not None:
            progress(f"emulator {j + 1}/{J}: nugget {np.exp(log_sn2):.2e}, signal {np.exp(log_sf2):.2e}")
    return Emulator(
        np.stack(Xs),
        np.stack(alphas),
        np.stack(lss),
        np.array(sfs),
        np.stack(betas),
        np.array(ym),
        np.array(ys),
        np.zeros(J),
    )
