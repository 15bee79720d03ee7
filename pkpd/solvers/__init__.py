"""Solvers: how a model is propagated between events.

``Analytic()`` is exact for linear models (matrix exponential in divided-difference form);
``ODE()`` integrates any model with diffrax between events; ``Auto()`` picks ``Analytic`` exactly when
``model.is_linear`` and never otherwise.
"""

from ._solvers import ODE as ODE
from ._solvers import Analytic as Analytic
from ._solvers import Auto as Auto
from ._solvers import resolve_solver as resolve_solver
