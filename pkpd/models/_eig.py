"""Closed-form real eigenvalues of small diagonal blocks of a compartmental rate matrix.

The library's linear models are block lower-triangular with blocks of size 1 (depots, transit,
effect and metabolite compartments), 2 or 3 (mammillary disposition). Mammillary blocks are similar
to symmetric matrices, so their eigenvalues are real and distinct for positive flows. Closed forms
(the quadratic and the trigonometric cubic, as NONMEM's ADVAN4/ADVAN12 use) keep them differentiable
without ``eigh``'s eigenvector derivatives, and work on every backend.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

__all__ = ["block_eigenvalues"]


def _eig2(B: Array) -> Array:
    a, b, c, d = B[0, 0], B[0, 1], B[1, 0], B[1, 1]
    half_tr = 0.5 * (a + d)
    disc = (0.5 * (a - d)) ** 2 + b * c
    sq = jnp.sqrt(jnp.maximum(disc, 0.0))
    # The root of larger magnitude first (no cancellation: half_tr <= 0 for compartmental blocks),
    # then the other from the determinant (Vieta), which stays accurate when it is small.
    big = half_tr - sq
    det = a * d - b * c
    safe_big = jnp.where(big == 0.0, 1.0, big)
    small = jnp.where(big == 0.0, 0.0, det / safe_big)
    return jnp.stack([small, big])


def _eig3(B: Array) -> Array:
    tr = B[0, 0] + B[1, 1] + B[2, 2]
    minors = (
        B[0, 0] * B[1, 1]
        - B[0, 1] * B[1, 0]
        + B[0, 0] * B[2, 2]
        - B[0, 2] * B[2, 0]
        + B[1, 1] * B[2, 2]
        - B[1, 2] * B[2, 1]
    )
    det = jnp.linalg.det(B)
    # lambda^3 + a2 lambda^2 + a1 lambda + a0 = 0
    a2, a1, a0 = -tr, minors, -det
    p = a1 - a2**2 / 3.0
    q = 2.0 * a2**3 / 27.0 - a2 * a1 / 3.0 + a0
    p_neg = jnp.minimum(p, -1e-300)
    r = jnp.sqrt(-p_neg / 3.0)
    arg = jnp.clip(-q / (2.0 * r**3), -1.0, 1.0)
    phi = jnp.arccos(arg) / 3.0
    k = jnp.arange(3.0)
    lam = 2.0 * r * jnp.cos(phi - 2.0 * jnp.pi * k / 3.0) - a2 / 3.0
    # Two Newton steps on the characteristic polynomial polish the trigonometric roots to full
    # precision (the arccos loses digits when two roots are close).
    for _ in range(2):
        f = ((lam + a2) * lam + a1) * lam + a0
        df = (3.0 * lam + 2.0 * a2) * lam + a1
        lam = lam - jnp.where(df == 0.0, 0.0, f / jnp.where(df == 0.0, 1.0, df))
    return lam


def block_eigenvalues(B: Array) -> Array:
    """Real eigenvalues of a 1x1, 2x2 or 3x3 block with real spectrum (compartmental blocks)."""
    n = B.shape[0]
    if n == 1:
        return B[0:1, 0]
    if n == 2:
        return _eig2(B)
    if n == 3:
        return _eig3(B)
    raise NotImplementedError("blocks larger than 3x3 have no closed-form eigenvalues here")
