"""XLA compile options of this package's compiled programs, and :func:`jit`, which applies them.

Every program of ``pkpd`` and ``regimens`` is compiled through :func:`jit` (``jax.jit`` with these options):

* ``xla_cpu_use_fusion_emitters=False``: XLA:CPU's MLIR fusion emitters (its default in jaxlib 0.10) compile
  this project's programs about twice as slowly, and the programs they make run no faster. Measured on a
  2-core x86_64 machine, jax 0.10.2, float64 (2026-12-06): the Laplace objective's gradient of notebook 02
  compiles in 8.1 s of CPU instead of 14.5 s; one patient's first ``pkpd optimize`` call (128 draws) takes
  24.5 s instead of 37.6 s; a warm 100-patient SPINE-72 trial 70 s instead of 83 s, with the same table.
  The option only concerns the CPU; other backends ignore it.
* fast compilation: also ``xla_backend_optimization_level=0`` and ``xla_llvm_disable_expensive_passes``
  (LLVM's optimizations off), for programs whose compilation is most of their cost: always for the Laplace,
  forecast and diagnostic programs (:func:`pkpd.fit.problem.fit_jit`; notebook 02's Laplace gradient compiles
  in 7.1 s of CPU instead of 16.2 s; not NUTS and SVI, which run thousands of steps: fast-compiled, a Theoph
  NUTS fit took 1.6x longer) and the variability draws, and for every program called inside a
  :func:`fast_compile` block (the regimen optimizer's quick settings, :class:`regimens.optimize.
  OptimizeSettings`). Their results differ from the optimized programs' at rounding level only; a block's
  mode is a setting of the run, never a function of how many patients a call holds, so a patient's result
  does not depend on the other patients of the call.

Options the installed XLA does not know (the option names are not a stable interface: XLA retires them)
are left out: the first call of a program compiles a one-line program with each option, once per process,
and keeps those XLA accepts. ``PKPD_XLA_OPTIONS=default`` compiles everything with XLA's defaults instead
(for comparisons; results then differ from the default run at rounding level, as they do between XLA
versions).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["compiler_options", "fast_compile", "jit"]

_FAST = contextvars.ContextVar("pkpd_fast_compile", default=False)

#: Options for every program (see the module docstring).
BASE_OPTIONS: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}
#: Added for ``fast_compile`` programs.
FAST_COMPILE_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.cache
def _supported(name: str, value: Any) -> bool:
    """Whether the default backend's XLA accepts the compile option ``name=value`` (one tiny compilation)."""
    import jax
    import jax.numpy as jnp

    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(jnp.zeros(())).compile()
    except Exception:  # noqa: BLE001 - XLA reports an unknown option as a runtime error of its own type
        return False
    return True


def compiler_options(fast_compile: bool = False) -> dict[str, Any]:
    """The compile options :func:`jit` gives a program (those the installed XLA accepts).

    Parameters
    ----------
    fast_compile
        Also switch LLVM's optimizations off (programs whose compilation dominates their run time).
    """
    if os.environ.get("PKPD_XLA_OPTIONS", "").strip().lower() == "default":
        return {}
    wanted = {**BASE_OPTIONS, **(FAST_COMPILE_OPTIONS if fast_compile else {})}
    return {k: v for k, v in wanted.items() if _supported(k, v)}


@contextlib.contextmanager
def fast_compile(enabled: bool = True) -> Iterator[None]:
    """Within the block, the package's programs (those :func:`jit` made with ``fast_compile=None``) are
    compiled for compile speed (LLVM's optimizations off); ``enabled=False`` restores the default inside a
    fast block. A program called in both modes is compiled once per mode."""
    token = _FAST.set(bool(enabled))
    try:
        yield
    finally:
        _FAST.reset(token)


class _Program:
    """``jax.jit(fun, compiler_options=..., **kwargs)``, made at the first use: the options are checked
    against the backend, which must not start when a module defining programs is imported
    (:func:`jax.distributed.initialize` has to come first). Called while another function is traced (its
    arguments are tracers: inside another program, or under ``grad``), the program is a part of that one,
    which JAX compiles with the outer program's options: a plain ``jax.jit`` of the same function is used
    (JAX accepts compile options on the outermost program only). Attributes (``lower``, ``_cache_size``...)
    are those of the jitted function with the options."""

    def __init__(self, fun: Callable, fast: bool | None, kwargs: dict):
        self._fun, self._fast = fun, fast
        self._options = dict(kwargs.pop("compiler_options", None) or {})
        self._kwargs = kwargs
        self._jitted: dict[bool, Any] = {}
        self._nested = None
        functools.update_wrapper(self, fun)

    def _program(self):
        fast = _FAST.get() if self._fast is None else self._fast
        if fast not in self._jitted:
            import jax

            opts = {**compiler_options(fast), **self._options}
            self._jitted[fast] = jax.jit(self._fun, compiler_options=opts or None, **self._kwargs)
        return self._jitted[fast]

    def __call__(self, *args, **kwargs):
        import jax

        if any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves((args, kwargs))):
            if self._nested is None:
                self._nested = jax.jit(self._fun, **self._kwargs)
            return self._nested(*args, **kwargs)
        return self._program()(*args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._program(), name)


def jit(fun: Callable | None = None, *, fast_compile: bool | None = None, **kwargs) -> Any:
    """``jax.jit`` with this package's compile options (:func:`compiler_options`).

    Usable as ``jit(f, static_argnums=...)`` or as a decorator, with or without arguments. ``fast_compile``:
    ``None`` follows the :func:`fast_compile` block in force when the program is called; ``True`` or
    ``False`` fixes it. ``kwargs`` are ``jax.jit``'s; ``compiler_options`` given there are added to (and
    override) the package's.
    """
    if fun is None:
        return lambda f: _Program(f, fast_compile, dict(kwargs))
    return _Program(fun, fast_compile, dict(kwargs))
