"""pkpd: JAX PK/PD simulation with NONMEM-exact dosing events.

Importing the package applies the process-wide JAX settings once, through :func:`pkpd.configure` with the
environment's defaults (:func:`pkpd.config.environment_defaults`): 64-bit floats (``jax_enable_x64``) unless
``PKPD_PRECISION`` says otherwise (``float64``, the default when unset; ``float32``; or ``auto``: float32 when
an accelerator plugin and its device files are present and ``JAX_PLATFORMS`` does not ask for the CPU,
float64 otherwise, decided without starting JAX's backends, which :func:`jax.distributed.initialize` needs to
come first), and a persistent compilation cache in ``~/.cache/pkpd/jax`` (``PKPD_JAX_CACHE``: another
directory, or ``off``). Call :func:`pkpd.configure` to choose otherwise; the command line calls it at
start-up with its ``--precision`` (default ``auto``: float64 on CPU, float32 on accelerators, from the
backend actually started).
"""

from .config import configure as configure
from .config import configure_from_environment as _configure_from_environment

_configure_from_environment()

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
