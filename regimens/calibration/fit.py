"""The aggregate-data likelihood of the evidence arms and its NumPyro posterior.

Model (every target ``j`` of arm ``a`` in trial ``t``; :class:`regimens.calibration.arms.Target`)::

    z_p   ~ Normal(prior mean, prior SD), truncated to the parameter's bounds (unconstrained scale)
    tau   ~ HalfNormal(0.5)                        between-trial SD of the rescue-propensity effect
    u_t   = tau * e_t,  e_t ~ Normal(0, 1)         trial effect (log multiplier of every rescue hazard)
    tau_w ~ HalfNormal(0.5)                        between-trial SD of the heterogeneity effect
    w_t   = tau_w * f_t, f_t ~ Normal(0, 1)        trial effect (log multiplier of the between-patient SDs)
    s_k   ~ HalfNormal(0.2 | 0.2 | 0.5)            arm-level discrepancy for log means/medians | log SDs | pain
    y_j   ~ StudentT(4, emulator_j(z, u_t, w_t), sqrt(se_j^2 + s_k(j)^2 + rmse_j^2))

``se_j`` comes from the arm's N and reported spread (sampling error of the arm's statistic), ``s_k`` is
what the model cannot explain arm by arm (shared by the arms of every trial: a model discrepancy, not
sampling error), ``rmse_j`` the emulator's held-out error. The Student-t (4 degrees of freedom) rather than a normal
error makes the fit robust to an arm whose number is misreported or from a different setting: with a normal
error one such arm (Pandey 2005's SDs of 130-182 mg on means of 988-1,220 mg, a CV of 0.13-0.15 that no
other PCA trial shows) inflates the discrepancy SD shared by every arm, and the remaining arms (Iyer 2023's
SDs) then inform the fit much less than their N says (calibration version 1 used the normal error). A target can be left out (``mask``), which is
how the leave-one-trial-out fits are made. Pointwise log-likelihoods are kept for PSIS-LOO comparison of
the combination rules (:func:`compare_rules`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from pkpd.outcome import OUTCOME_PARAMETERS

from .arms import Target
from .design import to_natural
from .emulator import Emulator, standardize

__all__ = ["Posterior", "fit_posterior", "KINDS"]

#: Discrepancy groups of the target statistics and their prior scales.
KINDS = {"log_mean": 0, "log_median": 0, "log_sd": 1, "pain_mean": 2}
_S_PRIOR = (0.2, 0.2, 0.5)
#: Scale of the half-normal priors of the between-trial SDs (log multipliers; calibration 2: 0.3 on the pain
#: curve). 0.5: PCA and rescue opioid use of similar patients and regimens differ between institutions by a
#: factor of about 1.5-2 (assumption, e.g. Iyer 2023's PCA arms vs Nielsen 2017's placebo arm, flagged).
_TAU_PRIOR = 0.5
#: Degrees of freedom of the Student-t arm error (robust to an outlying arm; 4: finite variance, heavy tails).
DISCREPANCY_DF = 4.0


@dataclass
class Posterior:
    """NUTS draws: ``z`` (S, P) unconstrained, ``theta`` (S, P) natural, ``u`` and ``w`` (S, T) trial
    effects, ``tau`` and ``tau_w`` (S,) their SDs, ``s`` (S, 3) discrepancy SDs, ``loglik`` (S, J) pointwise
    (masked targets: 0), diagnostics (R-hat, ESS, divergences)."""

    z: np.ndarray
    theta: np.ndarray
    u: np.ndarray
    tau: np.ndarray
    s: np.ndarray
    loglik: np.ndarray
    diagnostics: dict
    w: np.ndarray | None = None
    tau_w: np.ndarray | None = None


def _bounds_unconstrained() -> tuple[np.ndarray, np.ndarray]:
    lo, hi = [], []
    for p in OUTCOME_PARAMETERS:
        a, b = p.bounds
        if p.prior[0] == "lognormal":
            lo.append(np.log(max(a, 1e-12)))
            hi.append(np.log(b))
        elif p.prior[0] == "logitnormal":
            lo.append(np.log(a / (1 - a)))
            hi.append(np.log(b / (1 - b)))
        else:
            lo.append(a)
            hi.append(b)
    return np.array(lo), np.array(hi)


def _model(emu: Emulator, obs, se, kind, trial, mask, n_trials):
    import numpyro
    import numpyro.distributions as dist

    loc = np.array([p.prior_loc_scale[0] for p in OUTCOME_PARAMETERS])
    sc = np.array([p.prior_loc_scale[1] for p in OUTCOME_PARAMETERS])
    lo, hi = _bounds_unconstrained()
    z = numpyro.sample("z", dist.TruncatedNormal(loc, sc, low=lo, high=hi).to_event(1))
    tau = numpyro.sample("tau", dist.HalfNormal(_TAU_PRIOR))
    e = numpyro.sample("e", dist.Normal(0.0, 1.0).expand([n_trials]).to_event(1))
    u = tau * e
    tau_w = numpyro.sample("tau_w", dist.HalfNormal(_TAU_PRIOR))
    f = numpyro.sample("f", dist.Normal(0.0, 1.0).expand([n_trials]).to_event(1))
    w = tau_w * f
    s = numpyro.sample("s", dist.HalfNormal(jnp.asarray(_S_PRIOR)).to_event(1))
    x = standardize(jnp.broadcast_to(z, (len(obs), z.shape[-1])), u[trial], w[trial], xp=jnp)
    mu = emu.predict(x)
    sd = jnp.sqrt(se**2 + s[kind] ** 2 + jnp.asarray(emu.rmse) ** 2)
    ll = dist.StudentT(DISCREPANCY_DF, mu, sd).log_prob(obs) * mask
    numpyro.deterministic("loglik", ll)
    numpyro.factor("obs", jnp.sum(ll))


def fit_posterior(
    emu: Emulator,
    targets: list[Target],
    trial_index: np.ndarray,
    n_trials: int,
    *,
    mask: np.ndarray | None = None,
    draws: int = 1000,
    warmup: int = 1000,
    chains: int = 2,
    seed: int = 0,
    progress_bar: bool = False,
) -> Posterior:
    """NUTS on the aggregate-data likelihood.

    Parameters
    ----------
    emu
        The targets' emulator (with its held-out ``rmse``).
    targets
        The targets (observed values and standard errors).
    trial_index
        (J,) trial of each target (index into the trials).
    n_trials
        Number of trials (trial effects).
    mask
        (J,) 1 for targets in the likelihood, 0 for targets left out (default all in).
    """
    from numpyro.diagnostics import summary
    from numpyro.infer import MCMC, NUTS, init_to_median

    obs = jnp.asarray([t.value for t in targets])
    se = jnp.asarray([t.se for t in targets])
    kind = jnp.asarray([KINDS[t.stat] for t in targets])
    m = jnp.ones(len(targets)) if mask is None else jnp.asarray(mask, float)
    kernel = NUTS(_model, init_strategy=init_to_median, target_accept_prob=0.9)
    mcmc = MCMC(
        kernel,
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method="sequential",
        progress_bar=progress_bar,
    )
    mcmc.run(jax.random.PRNGKey(seed), emu, obs, se, kind, jnp.asarray(trial_index), m, n_trials)
    smp = mcmc.get_samples(group_by_chain=True)
    summ = summary({k: v for k, v in smp.items() if k in ("z", "tau", "s", "e", "tau_w", "f")}, group_by_chain=True)
    rhat = max(float(np.nanmax(np.asarray(v["r_hat"]))) for v in summ.values())
    ess = min(float(np.nanmin(np.asarray(v["n_eff"]))) for v in summ.values())
    div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    flat = {k: np.asarray(v).reshape((-1,) + v.shape[2:]) for k, v in smp.items()}
    z = flat["z"]
    u = flat["tau"][:, None] * flat["e"]
    w = flat["tau_w"][:, None] * flat["f"]
    return Posterior(
        z,
        to_natural(z),
        u,
        flat["tau"],
        flat["s"],
        flat["loglik"],
        {
            "max_rhat": rhat,
            "min_ess": ess,
            "divergences": div,
            "draws": int(z.shape[0]),
            "chains": chains,
            "warmup": warmup,
        },
        w,
        flat["tau_w"],
    )
