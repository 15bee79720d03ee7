"""pkpd.xla: the compile options of the package's programs (fusion emitters off, fast compilation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkpd import xla


def test_options_are_the_documented_ones_and_unknown_options_are_left_out(monkeypatch):
    assert xla.compiler_options() == {"xla_cpu_use_fusion_emitters": False}
    assert xla.compiler_options(fast_compile=True) == {
        "xla_cpu_use_fusion_emitters": False,
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    }
    # an option this XLA does not know (they are retired over time) is dropped, not passed on to fail
    monkeypatch.setattr(
        xla, "BASE_OPTIONS", {"xla_no_such_option_in_any_version": False, "xla_cpu_use_fusion_emitters": False}
    )
    assert xla.compiler_options() == {"xla_cpu_use_fusion_emitters": False}
    monkeypatch.setenv("PKPD_XLA_OPTIONS", "default")
    assert xla.compiler_options(fast_compile=True) == {}


def test_program_compiles_once_per_mode_and_follows_the_block():
    def f(x):
        return jnp.exp(x) * 2.0

    prog = xla.jit(f)
    x = jnp.linspace(0.0, 1.0, 5)
    ref = np.exp(np.linspace(0.0, 1.0, 5)) * 2.0
    np.testing.assert_allclose(prog(x), ref, rtol=1e-15)
    prog(x)
    assert list(prog._jitted) == [False] and prog._cache_size() == 1
    with xla.fast_compile():
        np.testing.assert_allclose(prog(x), ref, rtol=1e-15)
        with xla.fast_compile(False):
            prog(x)
    assert sorted(prog._jitted) == [False, True]  # one compiled program per mode
    assert prog._jitted[False]._cache_size() == 1 and prog._jitted[True]._cache_size() == 1
    fixed = xla.jit(f, fast_compile=True)
    fixed(x)
    assert list(fixed._jitted) == [True]  # a fixed mode ignores the block
    assert prog.__name__ == "f" and callable(prog.lower)  # jax.jit's attributes pass through


def test_program_called_inside_another_program_or_under_grad():
    """JAX takes compile options on the outermost program only: nested, the program is a plain part of the
    outer one (no error), with the same values and derivatives."""
    inner = xla.jit(lambda x: jnp.sin(x) ** 2, static_argnums=())
    outer = xla.jit(lambda x: inner(x) + 1.0)
    x = jnp.asarray(0.7)
    assert float(outer(x)) == pytest.approx(np.sin(0.7) ** 2 + 1.0, rel=1e-15)
    assert float(jax.grad(inner)(x)) == pytest.approx(2 * np.sin(0.7) * np.cos(0.7), rel=1e-14)
    assert float(jax.jit(jax.grad(lambda y: inner(y) * 3.0))(x)) == pytest.approx(
        6 * np.sin(0.7) * np.cos(0.7), rel=1e-14
    )


def test_fast_compiled_simulation_equals_the_optimized_one_to_rounding():
    """The same regimen simulation compiled both ways: outcomes equal to rounding (the modes change code
    generation, not the model). Reference: the default (optimized) program."""
    from pkpd.patients import spine72_population
    from pkpd.population import simulate_regimen
    from regimens import get_regimen

    pop = spine72_population(6, seed=3)
    ref = simulate_regimen(get_regimen("C1"), pop, seed=2).patients
    with xla.fast_compile():
        fast = simulate_regimen(get_regimen("C1"), pop, seed=2).patients
    num = ref.select_dtypes("number").columns
    np.testing.assert_allclose(fast[num].to_numpy(float), ref[num].to_numpy(float), rtol=1e-10, atol=1e-12)
