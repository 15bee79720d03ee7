"""Independent textbook closed-form pharmacokinetic solutions (pure numpy, float64).

This module is the *independent reference* against which the project's engine is
tested.  It deliberately uses no matrix exponential and no ODE solver: every
concentration is an explicit sum of exponentials with macro-constants.

Sources
-------
* M. Gibaldi & D. Perrier, *Pharmacokinetics*, 2nd ed., Marcel Dekker 1982:
  ch. 1 (one-compartment bolus / infusion / first-order absorption, Bateman
  function), ch. 2 (two- and three-compartment macro-constants), ch. 3 and
  appendix (multiple dosing, accumulation factor ``1/(1 - exp(-lambda*tau))``
  applied term-by-term, steady-state intermittent infusion).
* M. Rowland & T. N. Tozer, *Clinical Pharmacokinetics and Pharmacodynamics*,
  4th ed.: constant-rate infusion (``Css = R/CL``), multiple dosing,
  ``ka == k`` limiting case ``C = F*D*k*t*exp(-k t)/V``.
* NONMEM ADVAN1/ADVAN2 (one compartment), ADVAN3/ADVAN4 (two compartment),
  ADVAN11/ADVAN12 (three compartment) macro-constant formulas, including the
  trigonometric solution of the characteristic cubic used in ADVAN11/12.
* A. Y. Abuhelwa, D. J. R. Foster, R. N. Upton, "ADVAN-style analytical
  solutions for common pharmacokinetic models", J Pharmacol Toxicol Methods
  73 (2015) 42-48 ("speeding up the simulation of PK models: closed-form
  solutions").

Conventions
-----------
Amounts mg, volumes L, clearances L/h, rate constants 1/h, time h.  The
returned quantity is always the concentration in the central compartment,
``A_central / V1`` (mg/L).

Parameter dictionaries ``p``:

* 1 compartment: ``CL, V``  (``V1`` accepted as an alias of ``V``)
* 2 compartments: ``CL, V1, Q, V2``  (``Q2`` accepted as an alias of ``Q``)
* 3 compartments: ``CL, V1, Q2, V2, Q3, V3``  (``Q`` accepted for ``Q2``)

Unit impulse response
---------------------
For a mammillary model with elimination from the central compartment the
central concentration after a unit bolus is (Gibaldi & Perrier eq. 2.66 /
ADVAN macro-constants)

    h(t) = sum_i  A_i exp(-lambda_i t)

with

* 1 cmt: ``lambda = k = CL/V``, ``A = 1/V``
* 2 cmt: ``alpha, beta`` roots of ``s^2 - (k10+k12+k21) s + k10 k21``,
  ``A_alpha = (alpha - k21)/((alpha - beta) V1)``,
  ``A_beta  = (k21 - beta)/((alpha - beta) V1)``
* 3 cmt: ``lambda_i`` roots of the cubic (trigonometric solution),
  ``A_i = (k21 - lambda_i)(k31 - lambda_i) / ((lambda_j - lambda_i)(lambda_k - lambda_i) V1)``

Every other input is a convolution of ``h`` with the input function, done
analytically term-by-term.  For first-order absorption the term
``ka * A_i * (exp(-lambda_i t) - exp(-ka t))/(ka - lambda_i)`` is evaluated
with the numerically stable divided difference :func:`expdiff`, which is
exact at ``ka == lambda_i`` (limit ``t exp(-lambda_i t)``) and free of
catastrophic cancellation when ``ka`` is within ~1e-9 of ``lambda_i``.

Dose timing rule: a dose given at ``tdose`` contributes for ``t >= tdose``
(a dose exactly at ``t`` counts as given) and contributes zero before.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "expdiff",
    "micro_constants",
    "disposition",
    "conc_bolus",
    "conc_infusion",
    "conc_oral",
    "conc_multiple",
    "conc_ss_bolus",
    "conc_ss_infusion",
    "conc_ss_oral",
    "conc_ss_infusion_constant",
    "amounts_1cmt_oral",
]

_SERIES_THRESHOLD = 1e-4


# ---------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------
def _arr(t):
    return np.asarray(t, dtype=np.float64)


def _one_minus_exp(x):
    """``1 - exp(-x)`` without cancellation for small ``x``."""
    return -np.expm1(-_arr(x))


def expdiff(a, b, t):
    """Stable divided difference ``(exp(-a t) - exp(-b t)) / (b - a)``.

    Symmetric in ``a`` and ``b``; equals ``t exp(-a t)`` when ``a == b``.
    With ``m = min(a, b)``, ``M = max(a, b)``, ``x = (M - m) t`` it is computed
    as ``exp(-m t) * (-expm1(-x)) / (M - m)`` (no overflow, no cancellation),
    falling back to the Taylor series
    ``t exp(-m t) (1 - x/2 + x^2/6 - x^3/24 + x^4/120)`` when ``|x| < 1e-4``
    (truncation error < x^5/720 < 1.4e-23 relative).
    Broadcasts over ``a``, ``b``, ``t`` (``t >= 0`` expected).
    """
    a, b, t = np.broadcast_arrays(_arr(a), _arr(b), _arr(t))
    m = np.minimum(a, b)
    d = np.abs(b - a)
    x = d * t
    base = np.exp(-m * t)
    small = np.abs(x) < _SERIES_THRESHOLD
    d_safe = np.where(small, 1.0, d)
    x_s = np.where(small, x, 0.0)
    series = t * (1.0 - x_s / 2.0 + x_s**2 / 6.0 - x_s**3 / 24.0 + x_s**4 / 120.0)
    direct = -np.expm1(-np.where(small, 0.0, x)) / d_safe
    return base * np.where(small, series, direct)


# ---------------------------------------------------------------------------
# disposition (eigenvalues and macro-constants)
# ---------------------------------------------------------------------------
def _get(p, *names):
    for n in names:
        if n in p:
            return float(p[n])
    raise KeyError(f"parameter dict needs one of {names}; got {sorted(p)}")


def micro_constants(ncmt, p):
    """Micro rate constants: returns ``(V1, k10, [(k1j, kj1), ...])``."""
    if ncmt == 1:
        v1 = _get(p, "V", "V1")
        return v1, _get(p, "CL") / v1, []
    if ncmt == 2:
        v1 = _get(p, "V1", "V")
        q, v2 = _get(p, "Q", "Q2"), _get(p, "V2")
        return v1, _get(p, "CL") / v1, [(q / v1, q / v2)]
    if ncmt == 3:
        v1 = _get(p, "V1", "V")
        q2, v2 = _get(p, "Q2", "Q"), _get(p, "V2")
        q3, v3 = _get(p, "Q3"), _get(p, "V3")
        return v1, _get(p, "CL") / v1, [(q2 / v1, q2 / v2), (q3 / v1, q3 / v3)]
    raise ValueError(f"ncmt must be 1, 2 or 3, got {ncmt!r}")


def disposition(ncmt, p):
    """Eigenvalues ``lambda_i`` (descending) and macro-constants ``A_i``.

    The unit-bolus central concentration is ``sum_i A_i exp(-lambda_i t)``
    (units of ``A_i``: 1/L).

    * 1 cmt (ADVAN1): ``lambda = CL/V``, ``A = 1/V``.
    * 2 cmt (ADVAN3; Gibaldi & Perrier eqs. 2.14-2.20):
      ``alpha, beta = (s +/- sqrt(s^2 - 4 k10 k21))/2``, ``s = k10+k12+k21``;
      ``beta`` is computed as ``k10 k21 / alpha`` to avoid cancellation.
    * 3 cmt (ADVAN11; Abuhelwa et al. 2015, eqs. for the 3-cmt model):
      ``a0 = k10 k21 k31``,
      ``a1 = k10 k31 + k21 k31 + k21 k13 + k10 k21 + k31 k12``,
      ``a2 = k10 + k12 + k13 + k21 + k31``,
      ``p = a1 - a2^2/3``, ``q = 2 a2^3/27 - a1 a2/3 + a0``,
      ``r1 = sqrt(-p^3/27)``, ``phi = acos(-q/(2 r1))/3``, ``r2 = 2 r1^(1/3)``,
      ``lambda_{1,2,3} = a2/3 - r2 cos(phi + 2 pi j/3)``, ``j = 0, 1, 2``.
    """
    v1, k10, periph = micro_constants(ncmt, p)
    if ncmt == 1:
        return np.array([k10]), np.array([1.0 / v1])
    if ncmt == 2:
        k12, k21 = periph[0]
        s = k10 + k12 + k21
        disc = math.sqrt(max(s * s - 4.0 * k10 * k21, 0.0))
        alpha = 0.5 * (s + disc)
        beta = k10 * k21 / alpha
        a_alpha = (alpha - k21) / (alpha - beta) / v1
        a_beta = (k21 - beta) / (alpha - beta) / v1
        return np.array([alpha, beta]), np.array([a_alpha, a_beta])
    (k12, k21), (k13, k31) = periph
    a0 = k10 * k21 * k31
    a1 = k10 * k31 + k21 * k31 + k21 * k13 + k10 * k21 + k31 * k12
    a2 = k10 + k12 + k13 + k21 + k31
    pp = a1 - a2 * a2 / 3.0
    qq = 2.0 * a2**3 / 27.0 - a1 * a2 / 3.0 + a0
    r1 = math.sqrt(max(-(pp**3) / 27.0, 0.0))
    cosarg = max(-1.0, min(1.0, -qq / (2.0 * r1)))
    phi = math.acos(cosarg) / 3.0
    r2 = 2.0 * r1 ** (1.0 / 3.0)
    lam = np.array([a2 / 3.0 - r2 * math.cos(phi + 2.0 * math.pi * j / 3.0) for j in range(3)])
    lam = np.sort(lam)[::-1].copy()
    coef = np.empty(3)
    for i in range(3):
        j, k = [m for m in range(3) if m != i]
        coef[i] = (k21 - lam[i]) * (k31 - lam[i]) / ((lam[j] - lam[i]) * (lam[k] - lam[i])) / v1
    return lam, coef


# ---------------------------------------------------------------------------
# single doses
# ---------------------------------------------------------------------------
def conc_bolus(t, dose, ncmt, p, tdose=0.0):
    """IV bolus ``dose`` into the central compartment at ``tdose``.

    ``C(t) = dose * sum_i A_i exp(-lambda_i (t - tdose))`` for ``t >= tdose``
    (Gibaldi & Perrier eq. 1.8 / 2.66; ADVAN1/3/11).
    """
    t = _arr(t)
    lam, coef = disposition(ncmt, p)
    s = t - tdose
    given = s >= 0.0
    s0 = np.where(given, s, 0.0)[..., None]
    c = dose * np.sum(coef * np.exp(-lam * s0), axis=-1)
    return np.where(given, c, 0.0)


def conc_infusion(t, dose, duration, ncmt, p, tstart=0.0):
    """Zero-order infusion of ``dose`` over ``duration`` starting at ``tstart``.

    With ``R = dose/duration`` and ``s = t - tstart`` (Gibaldi & Perrier
    eqs. 1.32, 1.37 and 2.104; ADVAN1/3/11 infusion):

    * during (``0 <= s <= T``): ``R sum_i A_i/lambda_i (1 - exp(-lambda_i s))``
    * after  (``s > T``):       ``R sum_i A_i/lambda_i (1 - exp(-lambda_i T)) exp(-lambda_i (s - T))``

    ``duration <= 0`` is treated as a bolus.
    """
    if duration <= 0.0:
        return conc_bolus(t, dose, ncmt, p, tdose=tstart)
    t = _arr(t)
    lam, coef = disposition(ncmt, p)
    rate = dose / duration
    s = t - tstart
    started = s >= 0.0
    s0 = np.where(started, s, 0.0)[..., None]
    during = s0 <= duration
    sd = np.minimum(s0, duration)
    after_dt = np.maximum(s0 - duration, 0.0)
    term = coef / lam * _one_minus_exp(lam * sd) * np.where(during, 1.0, np.exp(-lam * after_dt))
    c = rate * np.sum(term, axis=-1)
    return np.where(started, c, 0.0)


def conc_oral(t, dose, ncmt, p, ka, F=1.0, tdose=0.0, tlag=0.0):
    """First-order absorption from a depot (bioavailability ``F``, lag ``tlag``).

    With ``s = t - tdose - tlag`` (Bateman function, Gibaldi & Perrier
    eqs. 1.64 / 2.92-2.95; ADVAN2/4/12):

        ``C(s) = F dose ka sum_i A_i (exp(-lambda_i s) - exp(-ka s))/(ka - lambda_i)``

    where the divided difference is evaluated with :func:`expdiff`, so the
    result is exact for ``ka == lambda_i`` (e.g. 1 cmt, ``ka == CL/V``:
    ``C = F D ka s exp(-k s)/V``, Rowland & Tozer) and stable for
    ``ka`` within 1e-9 relative of ``lambda_i``.  Zero for ``s < 0``.
    """
    t = _arr(t)
    lam, coef = disposition(ncmt, p)
    s = t - tdose - tlag
    given = s >= 0.0
    s0 = np.where(given, s, 0.0)[..., None]
    c = F * dose * ka * np.sum(coef * expdiff(lam, ka, s0), axis=-1)
    return np.where(given, c, 0.0)


def amounts_1cmt_oral(t, dose, ka, k, F=1.0):
    """Bateman amounts for the 1-cmt oral model, dose at ``t = 0``.

    ``A_depot = F D exp(-ka t)``,
    ``A_central = F D ka (exp(-k t) - exp(-ka t))/(ka - k)``
    (Gibaldi & Perrier eq. 1.62), exact ``F D ka t exp(-k t)`` for ``ka == k``.
    Both are zero for ``t < 0``.  Returns ``(A_depot, A_central)``.
    """
    t = _arr(t)
    given = t >= 0.0
    s = np.where(given, t, 0.0)
    depot = F * dose * np.exp(-ka * s)
    central = F * dose * ka * expdiff(k, ka, s)
    return np.where(given, depot, 0.0), np.where(given, central, 0.0)


def conc_multiple(kind, t, doses, ncmt, p, **kw):
    """Superposition of single doses (Gibaldi & Perrier ch. 3, principle of
    superposition for linear models).

    ``kind``: ``"bolus"``, ``"infusion"`` (requires ``duration=``) or
    ``"oral"`` (requires ``ka=``; optional ``F=``, ``tlag=``).
    ``doses``: iterable of ``(time, amount)``.
    """
    t = _arr(t)
    total = np.zeros_like(t, dtype=np.float64)
    for tdose, amt in doses:
        if kind == "bolus":
            total = total + conc_bolus(t, amt, ncmt, p, tdose=tdose)
        elif kind == "infusion":
            total = total + conc_infusion(t, amt, kw["duration"], ncmt, p, tstart=tdose)
        elif kind == "oral":
            total = total + conc_oral(
                t,
                amt,
                ncmt,
                p,
                kw["ka"],
                F=kw.get("F", 1.0),
                tdose=tdose,
                tlag=kw.get("tlag", 0.0),
            )
        else:
            raise ValueError(f"unknown dose kind {kind!r}")
    return total


# ---------------------------------------------------------------------------
# steady state
# ---------------------------------------------------------------------------
def _accum(lam, tau):
    """Accumulation factor ``1/(1 - exp(-lambda tau))`` (Gibaldi & Perrier eq. 3.10)."""
    return 1.0 / _one_minus_exp(lam * tau)


def conc_ss_bolus(t_since_dose, dose, tau, ncmt, p):
    """Steady state of repeated IV bolus ``dose`` every ``tau``.

    ``C_ss(t) = dose sum_i A_i exp(-lambda_i t)/(1 - exp(-lambda_i tau))``,
    ``0 <= t <= tau`` = time since the most recent dose (``t = tau`` gives the
    pre-dose trough).  Gibaldi & Perrier eqs. 3.11 and 3.36.
    """
    t = _arr(t_since_dose)[..., None]
    lam, coef = disposition(ncmt, p)
    return dose * np.sum(coef * np.exp(-lam * t) * _accum(lam, tau), axis=-1)


def conc_ss_infusion(t_since_start, dose, duration, tau, ncmt, p):
    """Steady state of intermittent infusions (``dose`` over ``duration`` every ``tau``).

    ``R = dose/duration``, ``T = duration <= tau``, ``t`` = time since the start
    of the most recent infusion, ``0 <= t <= tau`` (Gibaldi & Perrier
    eqs. 3.57-3.58, generalised term-by-term to multi-exponential disposition):

    * ``t <= T``: ``R sum_i A_i/lambda_i [ (1 - e^{-lambda_i t})
      + e^{-lambda_i t} (1 - e^{-lambda_i T}) e^{-lambda_i (tau - T)}/(1 - e^{-lambda_i tau}) ]``
    * ``t >  T``: ``R sum_i A_i/lambda_i (1 - e^{-lambda_i T}) e^{-lambda_i (t - T)}/(1 - e^{-lambda_i tau})``

    ``duration == tau`` gives the constant ``R/CL``.
    """
    if duration > tau:
        raise ValueError("duration must be <= tau")
    if duration <= 0.0:
        return conc_ss_bolus(t_since_start, dose, tau, ncmt, p)
    t = _arr(t_since_start)[..., None]
    lam, coef = disposition(ncmt, p)
    rate = dose / duration
    T = duration
    w = coef / lam
    acc = _accum(lam, tau)
    onem_T = _one_minus_exp(lam * T)
    td = np.minimum(t, T)
    during = w * (_one_minus_exp(lam * td) + np.exp(-lam * td) * onem_T * np.exp(-lam * (tau - T)) * acc)
    after = w * onem_T * np.exp(-lam * np.maximum(t - T, 0.0)) * acc
    return rate * np.sum(np.where(t <= T, during, after), axis=-1)


def conc_ss_infusion_constant(rate, ncmt, p):
    """Continuous infusion plateau ``C_ss = R/CL`` (Rowland & Tozer)."""
    micro_constants(ncmt, p)  # validate ncmt / params
    return rate / _get(p, "CL")


def conc_ss_oral(t_since_dose, dose, tau, ncmt, p, ka, F=1.0):
    """Steady state of repeated oral doses, first-order absorption.

    Textbook form (Gibaldi & Perrier eq. 3.27, multi-exponential extension):

        ``C_ss(t) = F D ka sum_i A_i/(ka - lambda_i) [ e^{-lambda_i t}/(1 - e^{-lambda_i tau})
                                                      - e^{-ka t}/(1 - e^{-ka tau}) ]``

    i.e. the accumulation factor applied separately to each exponential term,
    including the ``ka`` term.  To stay exact at ``ka == lambda_i`` the
    bracket is rewritten over the common denominator
    ``(1 - e^{-lambda tau})(1 - e^{-ka tau})``; its numerator divided by
    ``(ka - lambda)`` equals

        ``expdiff(lambda, ka, t) - (t - tau) expdiff(lambda t + ka tau, ka t + lambda tau, 1)``

    (both divided differences stable), whose ``ka -> lambda`` limit is
    ``e^{-lambda t} [t (1 - e^{-lambda tau}) + tau e^{-lambda tau}]``.
    ``0 <= t <= tau`` = time since the most recent dose.
    """
    t = _arr(t_since_dose)[..., None]
    lam, coef = disposition(ncmt, p)
    u = lam * t + ka * tau
    v = ka * t + lam * tau
    num = expdiff(lam, ka, t) - (t - tau) * expdiff(u, v, 1.0)
    term = coef * num * _accum(lam, tau) * _accum(ka, tau)
    return F * dose * ka * np.sum(term, axis=-1)
