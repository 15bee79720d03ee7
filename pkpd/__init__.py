"""pkpd: JAX PK/PD simulation with NONMEM-exact dosing events.

Importing the package turns on 64-bit floats in JAX (``jax_enable_x64``) unless the environment variable
``PKPD_PRECISION`` says otherwise: ``float64`` (the default when unset), ``float32``, or ``auto`` (float32
when an accelerator plugin and its device files are present and ``JAX_PLATFORMS`` does not ask for the CPU,
float64 otherwise; decided without starting JAX's backends, which :func:`jax.distributed.initialize` needs
to come first). The command line's ``--precision`` (default ``auto``: float64 on CPU, float32 on
accelerators, from the backend actually started) and :func:`pkpd.batch.set_precision` switch it at run time.
"""

import os as _os

import jax as _jax


def _import_precision() -> str:
    value = _os.environ.get("PKPD_PRECISION", "float64").strip().lower() or "float64"
    if value != "auto":
        return "float32" if value == "float32" else "float64"
    import importlib.util

    platforms = _os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms and platforms.split(",")[0].strip() == "cpu":
        return "float64"
    plugins = (
        ("jax_cuda12_plugin", "/dev/nvidiactl"),
        ("jax_cuda13_plugin", "/dev/nvidiactl"),
        ("jax_rocm60_plugin", "/dev/kfd"),
        ("jax_rocm7_plugin", "/dev/kfd"),
        ("libtpu", "/dev/accel0"),
        ("libtpu", "/dev/vfio"),
    )
    for module, dev in plugins:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found and _os.path.exists(dev):
            return "float32"
    return "float64"


if _import_precision() == "float64":
    _jax.config.update("jax_enable_x64", True)


def _enable_compilation_cache() -> None:
    """Persistent XLA compilation cache: a program compiled once (the optimizer's take about a minute) is
    reused by later processes with the same shapes (a second ``pkpd optimize`` starts in seconds).
    ``PKPD_JAX_CACHE``: the directory (default ``~/.cache/pkpd/jax``), or ``off``. A cache directory the user
    configured for JAX (``JAX_COMPILATION_CACHE_DIR``) wins. Entries are keyed by the program, the compile
    options and the JAX version, so a stale entry is never used."""
    where = _os.environ.get("PKPD_JAX_CACHE", "").strip()
    if where.lower() in ("off", "0", "no", "none", "false") or _jax.config.jax_compilation_cache_dir:
        return
    path = where or _os.path.join(_os.path.expanduser("~"), ".cache", "pkpd", "jax")
    try:
        _os.makedirs(path, exist_ok=True)
    except OSError:  # read-only home: run without the cache
        return
    _jax.config.update("jax_compilation_cache_dir", path)
    # also the small host-side programs (matrix exponentials, variability draws: 0.3-0.5 s each), which a
    # process compiles for every new shape
    _jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.25)


_enable_compilation_cache()

from . import models as models
from . import solvers as solvers
from .errors import DatasetError as DatasetError
from .errors import DatasetViolation as DatasetViolation
from .errors import ExpressionError as ExpressionError
from .errors import GridError as GridError
from .errors import ModelSpecError as ModelSpecError
from .errors import PKPDError as PKPDError
from .errors import SolverError as SolverError
from .models import describe_model as describe_model
from .models import get_model as get_model
from .models import list_models as list_models
from .models import load_user_model as load_user_model
from .simulate import ParameterSpec as ParameterSpec
from .simulate import Simulator as Simulator
from .simulate import load_params as load_params
from .simulate import prepare as prepare
from .simulate import simulate as simulate
from .solvers import ODE as ODE
from .solvers import Analytic as Analytic
from .solvers import Auto as Auto


def _package_version() -> str:
    """The installed distribution's version (``pyproject.toml``); ``0+unknown`` when run from a source tree that
    was never installed (``pip install -e .`` records it)."""
    from importlib import metadata

    try:
        return metadata.version("pkpd-spine")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _package_version()
