"""Exact propagation of linear compartment systems between events.

For ``dx/dt = K x + r`` with constant ``K`` and constant infusion rates ``r`` over a step ``dt``,

.. math:: x(t+dt) = e^{K dt} x(t) + \\Big(\\int_0^{dt} e^{K s}\\,ds\\Big) r .

Both matrices are evaluated in Newton's divided-difference form, which holds for *any* matrix with
eigenvalues :math:`\\lambda_0..\\lambda_{n-1}` (repeated or not, diagonalizable or not):

.. math:: e^{K t} = \\sum_j E[\\lambda_0..\\lambda_j]\\, P_j,\\qquad
          \\int_0^t e^{K s} ds = \\sum_j E[0, \\lambda_0..\\lambda_j]\\, P_j,\\qquad
          P_j = \\prod_{i<j} (K - \\lambda_i I),

with :math:`E[\\cdot]` the divided differences of :math:`z \\mapsto e^{z t}`. The divided differences are
computed on eigenvalues sorted in decreasing order by the usual recursion, switching to a Taylor
expansion on clusters of nearly equal eigenvalues. This removes the classical ``1/(ka - k)`` blow-up of
the Bateman function and makes transit chains (all rates equal, a Jordan block) exact.

References
----------
McCurdy AC, Ng KC, Parlett BN. Accurate computation of divided differences of the exponential
function. Math Comp 1984;43:501-528.
Higham NJ. Functions of Matrices. SIAM 2008, section 10.
"""

from __future__ import annotations

from typing import cast

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = ["newton_basis", "divided_differences", "propagators"]

# Clusters with (max - min) * t below _TAU use the Taylor branch; _L Taylor terms keep its truncation
# error below 1e-15 relative for clusters of up to 4 points, while outside clusters the recursion loses
# at most a factor k/_TAU per level.
_TAU = 0.25
_L = 14


def newton_basis(K: Array, lam_sorted: Array) -> Array:
    """Stack ``P_j = prod_{i<j}(K - lam_i I)``, shape (n, n, n), for eigenvalues sorted decreasingly."""
    n = K.shape[-1]
    eye = jnp.eye(n, dtype=K.dtype)
    P = [eye]
    for j in range(1, n):
        P.append(P[-1] @ (K - lam_sorted[j - 1] * eye))
    return jnp.stack(P)


def divided_differences(points: Array, t: ArrayLike) -> dict[tuple[int, int], Array]:
    """Table ``T[i][j] = E[points_i..points_j]`` of ``z -> exp(z t)`` for a short sequence of points.

    ``points`` has shape (m,) (sorted decreasingly); ``t`` is a scalar or array (broadcast). Returns
    a dict keyed by ``(i, j)``. Stable for coincident and nearly coincident points.

    Within a cluster (``(max - min) * |t| <= _TAU``) ``E[p_i..p_j] = e^{p_i t} sum_q t^(k+q)/(k+q)! h_q(y)``
    with ``k = j - i`` and ``h_q`` the complete homogeneous polynomials of the differences ``y_l = p_l - p_i``,
    updated point by point (``h^new_q = h_q + y_j h^new_(q-1)``). The first point added to an anchor's cluster
    has ``h_q = y^q``: its series is summed by Horner's rule, and the powers are formed only when a later
    point needs them (fewer operations to compile and differentiate; same truncation).
    """
    m = points.shape[-1]
    t = jnp.asarray(t)
    p = [points[..., i] for i in range(m)]
    e = [jnp.exp(pi * t) for pi in p]
    # t^q / q! for q = 0..m-1+_L
    tp = [jnp.ones_like(t)]
    for q in range(1, m + _L):
        tp.append(tp[-1] * t / q)
    T = {(i, i): e[i] for i in range(m)}
    H: dict[int, list[Array]] = {}  # anchor i -> [h_0 .. h_L] of its cluster so far (absent: the anchor alone)
    # the cluster extents only choose a branch: no derivative flows through them
    ps = [jax.lax.stop_gradient(pi) for pi in p]
    lo, hi = dict(enumerate(ps)), dict(enumerate(ps))
    at = jnp.abs(jax.lax.stop_gradient(t))
    # Level by level (k = j - i), so T[i+1, j] and T[i, j-1] exist when T[i, j] is formed.
    for k in range(1, m):
        for i in range(m - k):
            j = i + k
            y = p[j] - p[i]
            lo[i] = jnp.minimum(lo[i], ps[j])
            hi[i] = jnp.maximum(hi[i], ps[j])
            cluster = (hi[i] - lo[i]) * at <= _TAU
            # Taylor branch around p_i; y is masked outside clusters so the unused branch stays finite
            # (no NaN gradients through jnp.where).
            ys = jnp.where(cluster, y, 0.0)
            if i not in H:  # k == 1: h_q = ys^q
                series = tp[1 + _L]
                for q in range(_L - 1, -1, -1):
                    series = tp[1 + q] + ys * series
                if j < m - 1:  # a later point of this anchor needs the coefficients
                    H[i] = [jnp.ones_like(ys)]
                    for q in range(1, _L + 1):
                        H[i].append(H[i][-1] * ys)
            else:
                newH = [H[i][0]]
                for q in range(1, _L + 1):
                    newH.append(H[i][q] + ys * newH[q - 1])
                H[i] = newH
                series = cast(Array, sum(tp[k + q] * newH[q] for q in range(_L + 1)))
            taylor = e[i] * series
            denom = jnp.where(cluster, 1.0, y)
            rec = (T[(i + 1, j)] - T[(i, j - 1)]) / denom
            T[(i, j)] = jnp.where(cluster, taylor, rec)
    return T


def propagators(lam_sorted: Array, t: ArrayLike, with_input: bool = True) -> tuple[Array, Array | None]:
    """Newton coefficients for one step ``t``: ``f[..., j] = E[lam_0..lam_j]`` and
    ``g[..., j] = E[0, lam_0..lam_j]`` (the latter only if ``with_input``)."""
    n = lam_sorted.shape[-1]
    zero = jnp.zeros_like(lam_sorted[..., :1])
    pts = jnp.concatenate([zero, lam_sorted], axis=-1) if with_input else lam_sorted
    T = divided_differences(pts, t)
    off = 1 if with_input else 0
    f = jnp.stack([T[(off, off + j)] for j in range(n)], axis=-1)
    if not with_input:
        return f, None
    g = jnp.stack([T[(0, 1 + j)] for j in range(n)], axis=-1)
    return f, g
