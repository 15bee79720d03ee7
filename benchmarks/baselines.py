"""Reference (baseline) implementations for benchmark workload W1.

W1: 2-compartment model with first-order absorption, repeated oral dosing.

    depot --KA--> central (V1) <--Q--> peripheral (V2)
                     |
                     CL
                     v

* KA = 1 /h, CL = 5 L/h, V1 = 50 L, Q = 10 L/h, V2 = 100 L
* 10 mg oral (into the depot) every 12 h for 7 days: t = 0, 12, ..., 156 (14 doses)
* observations hourly, t = 0, 1, ..., 168 (169 points)
* log-normal 30 % IIV on CL and V1: P_i = P * exp(eta), eta ~ N(0, sqrt(log(1 + 0.3**2)))
* output: central concentration in mg/L (central amount / V1)

A dose exactly at an observation time counts as given (the dose enters the depot,
so the central concentration is continuous there anyway).

Three baselines are provided:

* :func:`numpy_superposition` -- closed-form triexponential, re-summing every past dose
  (numpy broadcasting over [n, n_obs, n_doses], chunked over subjects);
* :func:`scipy_solve_ivp` -- per-subject ODE integration with scipy, restarting the
  integrator at each dose (reference accuracy, intended for small n);
* :func:`make_naive_diffrax` -- the "straightforward" diffrax approach: one
  diffeqsolve per subject over the whole horizon with the dosing entering as an
  analytic absorption forcing term, no knowledge of dose times given to the step-size
  controller, vmapped over subjects.
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

# float64 unless the run asked for float32 (benchmarks/gpu_check.py runs one process per precision)
if os.environ.get("PKPD_PRECISION", "float64").strip().lower() != "float32":
    jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

__all__ = [
    "W1",
    "sample_w1_parameters",
    "numpy_superposition",
    "scipy_solve_ivp",
    "make_naive_diffrax",
]

# --------------------------------------------------------------------------------------
# Workload definition
# --------------------------------------------------------------------------------------

W1: dict = {
    "KA": 1.0,  # 1/h
    "CL": 5.0,  # L/h
    "V1": 50.0,  # L (central)
    "Q": 10.0,  # L/h
    "V2": 100.0,  # L (peripheral)
    "DOSE": 10.0,  # mg, oral into the depot
    "II": 12.0,  # h, dosing interval
    "N_DOSES": 14,  # t = 0, 12, ..., 156
    "T_OBS": np.arange(169.0),  # hourly, 0..168
    "CV": 0.3,  # log-normal IIV on CL and V1
}
W1["DOSE_TIMES"] = W1["II"] * np.arange(W1["N_DOSES"], dtype=np.float64)

_PARAM_NAMES = ("CL", "V1", "Q", "V2", "KA")


def sample_w1_parameters(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-subject parameters for W1.

    Returns a dict with float64 arrays of shape [n] for CL, V1, Q, V2, KA.  CL and V1
    carry independent log-normal IIV (CL_i = CL * exp(eta), eta ~ N(0, sd),
    sd = sqrt(log(1 + CV**2))); Q, V2, KA are constant arrays.
    """
    rng = np.random.default_rng(seed)
    sd = math.sqrt(math.log1p(W1["CV"] ** 2))
    eta = rng.normal(0.0, sd, size=(2, n))
    return {
        "CL": W1["CL"] * np.exp(eta[0]),
        "V1": W1["V1"] * np.exp(eta[1]),
        "Q": np.full(n, W1["Q"], dtype=np.float64),
        "V2": np.full(n, W1["V2"], dtype=np.float64),
        "KA": np.full(n, W1["KA"], dtype=np.float64),
    }


def _as_param_arrays(params: dict) -> tuple[np.ndarray, ...]:
    arrs = [np.atleast_1d(np.asarray(params[k], dtype=np.float64)) for k in _PARAM_NAMES]
    return tuple(np.broadcast_arrays(*arrs))


def _dose_amounts(dose, dose_times: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.asarray(dose, dtype=np.float64), dose_times.shape).copy()


# --------------------------------------------------------------------------------------
# 1. numpy closed-form superposition
# --------------------------------------------------------------------------------------


def _macro_constants(CL, V1, Q, V2, KA):
    """alpha, beta and the unit-dose concentration coefficients A, B, C.

    Single oral dose D at t=0 (F=1):
        C(t) = D * (A exp(-alpha t) + B exp(-beta t) + C exp(-ka t))
    with
        A = ka/V1 * (k21 - alpha) / ((ka - alpha) (beta - alpha))
        B = ka/V1 * (k21 - beta)  / ((ka - beta)  (alpha - beta))
        C = ka/V1 * (k21 - ka)    / ((alpha - ka) (beta - ka))
    """
    k10 = CL / V1
    k12 = Q / V1
    k21 = Q / V2
    s = k10 + k12 + k21
    disc = np.sqrt(s * s - 4.0 * k10 * k21)
    alpha = 0.5 * (s + disc)
    beta = k10 * k21 / alpha  # numerically stable small root
    f = KA / V1
    A = f * (k21 - alpha) / ((KA - alpha) * (beta - alpha))
    B = f * (k21 - beta) / ((KA - beta) * (alpha - beta))
    C = f * (k21 - KA) / ((alpha - KA) * (beta - KA))
    return alpha, beta, A, B, C


def numpy_superposition(params: dict, t_obs, dose_times, dose, chunk: int = 2000) -> np.ndarray:
    """Central concentration [n, n_obs] by closed-form superposition over all past doses.

    For every subject, observation and dose the textbook 2-compartment oral
    triexponential is evaluated at (t - t_d) and summed over doses with t_d <= t.
    Vectorised with numpy broadcasting over [chunk, n_obs, n_doses].
    (Assumes distinct ka, alpha, beta, as is the case for W1.)
    """
    CL, V1, Q, V2, KA = _as_param_arrays(params)
    t_obs = np.asarray(t_obs, dtype=np.float64)
    dose_times = np.asarray(dose_times, dtype=np.float64)
    amts = _dose_amounts(dose, dose_times)

    # time since each dose; doses in the future get +inf so exp(-k * inf) = 0
    dt = t_obs[:, None] - dose_times[None, :]  # [n_obs, n_doses]
    dt = np.where(dt >= 0.0, dt, np.inf)

    n = CL.shape[0]
    out = np.empty((n, t_obs.shape[0]), dtype=np.float64)
    alpha, beta, A, B, C = _macro_constants(CL, V1, Q, V2, KA)
    for s in range(0, n, chunk):
        e = slice(s, s + chunk)
        acc = None
        for rate, coef in ((alpha[e], A[e]), (beta[e], B[e]), (KA[e], C[e])):
            ex = np.exp(-rate[:, None, None] * dt[None, :, :])  # [c, n_obs, n_doses]
            term = coef[:, None] * (ex @ amts)  # sum over doses -> [c, n_obs]
            acc = term if acc is None else acc + term
        out[e] = acc
    return out


# --------------------------------------------------------------------------------------
# 2. scipy solve_ivp, restarting at each dose
# --------------------------------------------------------------------------------------


def scipy_solve_ivp(
    params: dict,
    t_obs,
    dose_times,
    dose,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    method: str = "DOP853",
) -> np.ndarray:
    """Central concentration [n, n_obs] by integrating the 3-state ODE per subject.

    States (depot, central, peripheral) in mg.  Integration is restarted at each dose
    time with the bolus added to the depot; observations at t with t_d <= t < t_{d+1}
    are taken from the segment after dose d (so a dose at an observation time counts
    as given).  Observations before the first dose are zero.  Loops over subjects:
    intended for small n.
    """
    CL, V1, Q, V2, KA = _as_param_arrays(params)
    t_obs = np.asarray(t_obs, dtype=np.float64)
    dose_times = np.asarray(dose_times, dtype=np.float64)
    amts = _dose_amounts(dose, dose_times)
    order = np.argsort(dose_times, kind="stable")
    dose_times, amts = dose_times[order], amts[order]

    n = CL.shape[0]
    n_obs = t_obs.shape[0]
    out = np.zeros((n, n_obs), dtype=np.float64)
    t_end = max(float(t_obs.max()), float(dose_times.max()))
    # segment boundaries: unique dose times, then the end of the horizon
    seg_starts = np.unique(dose_times)
    seg_amts = np.array([amts[dose_times == t].sum() for t in seg_starts])
    seg_ends = np.append(seg_starts[1:], t_end)

    for i in range(n):
        k10 = CL[i] / V1[i]
        k12 = Q[i] / V1[i]
        k21 = Q[i] / V2[i]
        ka = KA[i]
        jac = np.array([[-ka, 0.0, 0.0], [ka, -(k10 + k12), k21], [0.0, k12, -k21]], dtype=np.float64)

        def rhs(t, y, jac=jac):
            return jac @ y

        def jac_fn(t, y, jac=jac):  # callable: LSODA rejects a constant array here
            return jac

        y = np.zeros(3)
        for k, (t0, t1) in enumerate(zip(seg_starts, seg_ends)):
            y = y.copy()
            y[0] += seg_amts[k]
            last = k == len(seg_starts) - 1
            mask = (t_obs >= t0) & ((t_obs <= t1) if last else (t_obs < t1))
            if t1 <= t0:  # dose at the very end of the horizon
                if mask.any():
                    out[i, mask] = y[1] / V1[i]
                continue
            t_eval = t_obs[mask]
            if not last:
                # also evaluate the segment end to carry the state forward
                t_eval_full = np.append(t_eval, t1)
            else:
                t_eval_full = t_eval if t_eval.size and t_eval[-1] == t1 else np.append(t_eval, t1)
            kw = {"jac": jac_fn} if method in ("LSODA", "BDF", "Radau") else {}
            sol = solve_ivp(rhs, (t0, t1), y, method=method, t_eval=t_eval_full, rtol=rtol, atol=atol, **kw)
            if not sol.success:
                raise RuntimeError(f"solve_ivp failed for subject {i}: {sol.message}")
            if t_eval.size:
                out[i, mask] = sol.y[1, : t_eval.size] / V1[i]
            y = sol.y[:, -1]
    return out


# --------------------------------------------------------------------------------------
# 3. naive diffrax: one solve over the whole horizon, doses as a forcing term
# --------------------------------------------------------------------------------------

_SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
}


def make_naive_diffrax(t_obs, dose_times, dose, rtol=1e-8, atol=1e-10, solver="tsit5"):
    """Build the jitted "straightforward" diffrax baseline.

    Returns f(CL, V1, Q, V2, KA) -> conc [n, n_obs] (inputs: arrays of shape [n]).
    One diffeqsolve per subject over [0, t_end] on the 2-state (central, peripheral)
    ODE, with the depot handled analytically as a forcing term

        input(t) = KA * sum_d dose_d * exp(-KA (t - t_d)) * (t >= t_d),

    a PIDController(rtol, atol) that is told nothing about the dose times (no jump_ts),
    SaveAt(ts=t_obs), max_steps=100000, jax.vmap over subjects.
    """
    t_obs_np = np.asarray(t_obs, dtype=np.float64)
    dt_np = np.asarray(dose_times, dtype=np.float64)
    amts_np = _dose_amounts(dose, dt_np)
    t_obs_j = jnp.asarray(t_obs_np)
    td = jnp.asarray(dt_np)
    amts = jnp.asarray(amts_np)
    t0 = float(min(0.0, t_obs_np.min(), dt_np.min()))
    t1 = float(t_obs_np.max())
    solver_obj = _SOLVERS[solver]() if isinstance(solver, str) else solver

    def vector_field(t, y, args):
        CL, V1, Q, V2, KA = args
        el = t - td
        absorption = KA * jnp.sum(jnp.where(el >= 0.0, amts * jnp.exp(-KA * jnp.maximum(el, 0.0)), 0.0))
        a1, a2 = y[0], y[1]
        k10, k12, k21 = CL / V1, Q / V1, Q / V2
        da1 = absorption - (k10 + k12) * a1 + k21 * a2
        da2 = k12 * a1 - k21 * a2
        return jnp.stack([da1, da2])

    term = diffrax.ODETerm(vector_field)
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    saveat = diffrax.SaveAt(ts=t_obs_j)

    def one(CL, V1, Q, V2, KA):
        sol = diffrax.diffeqsolve(
            term,
            solver_obj,
            t0=t0,
            t1=t1,
            dt0=None,
            y0=jnp.zeros(2, dtype=jnp.float64),
            args=(CL, V1, Q, V2, KA),
            saveat=saveat,
            stepsize_controller=controller,
            max_steps=100000,
        )
        return sol.ys[:, 0] / V1

    return jax.jit(jax.vmap(one))


# --------------------------------------------------------------------------------------
# Self-check
# --------------------------------------------------------------------------------------

if __name__ == "__main__":
    t_obs = W1["T_OBS"]
    dose_times = W1["DOSE_TIMES"]
    dose = W1["DOSE"]

    # ---- agreement, n = 50
    p = sample_w1_parameters(50, seed=0)
    c_np = numpy_superposition(p, t_obs, dose_times, dose)
    c_sp = scipy_solve_ivp(p, t_obs, dose_times, dose)
    f = make_naive_diffrax(t_obs, dose_times, dose)
    args = tuple(jnp.asarray(p[k]) for k in _PARAM_NAMES)
    c_dx = np.asarray(jax.block_until_ready(f(*args)))

    peak = c_np.max(axis=1, keepdims=True)
    err_sp = float(np.max(np.abs(c_np - c_sp) / peak))
    err_dx = float(np.max(np.abs(c_np - c_dx) / peak))
    print(f"n=50: peak conc range [{peak.min():.4f}, {peak.max():.4f}] mg/L")
    print(f"  numpy vs scipy        max|diff|/peak = {err_sp:.3e}")
    print(f"  naive diffrax vs numpy max|diff|/peak = {err_dx:.3e}")
    assert err_sp < 1e-8, err_sp
    assert err_dx < 1e-5, err_dx

    # ---- timings, n = 1000
    n = 1000
    p = sample_w1_parameters(n, seed=1)
    numpy_superposition(p, t_obs, dose_times, dose)  # warm-up
    reps = 5
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        numpy_superposition(p, t_obs, dose_times, dose)
        ts.append(time.perf_counter() - t)
    print(f"n={n}: numpy_superposition  best {min(ts) * 1e3:8.2f} ms  median {np.median(ts) * 1e3:8.2f} ms")

    args = tuple(jnp.asarray(p[k]) for k in _PARAM_NAMES)
    t = time.perf_counter()
    jax.block_until_ready(f(*args))  # compile + warm-up for this shape
    print(f"n={n}: naive diffrax compile+first call {time.perf_counter() - t:8.2f} s")
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    print(f"n={n}: naive diffrax        best {min(ts) * 1e3:8.2f} ms  median {np.median(ts) * 1e3:8.2f} ms")

    n_small = 20
    p = sample_w1_parameters(n_small, seed=2)
    t = time.perf_counter()
    scipy_solve_ivp(p, t_obs, dose_times, dose)
    el = time.perf_counter() - t
    print(f"scipy_solve_ivp: {el / n_small * 1e3:.2f} ms/subject (n={n_small})")
    print("OK")
