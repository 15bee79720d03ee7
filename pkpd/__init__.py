"""pkpd: JAX PK/PD simulation with NONMEM-exact dosing events.

Importing the package turns on 64-bit floats in JAX (``jax_enable_x64``) unless the environment variable
``PKPD_PRECISION=float32`` is set: simulation and fitting default to float64 on CPU.
"""

import os as _os

import jax as _jax

if _os.environ.get("PKPD_PRECISION", "float64").lower() != "float32":
    _jax.config.update("jax_enable_x64", True)

from . import models as models
from . import solvers as solvers
from ._errors import DatasetError as DatasetError
from ._errors import DatasetViolation as DatasetViolation
from ._errors import ExpressionError as ExpressionError
from ._errors import ModelSpecError as ModelSpecError
from ._errors import PKPDError as PKPDError
from ._errors import SolverError as SolverError
from .models import describe_model as describe_model
from .models import get_model as get_model
from .models import list_models as list_models
from .simulate import ParameterSpec as ParameterSpec
from .simulate import load_params as load_params
from .simulate import prepare as prepare
from .simulate import simulate as simulate
from .solvers import ODE as ODE
from .solvers import Analytic as Analytic
from .solvers import Auto as Auto

__version__ = "0.1.0"
