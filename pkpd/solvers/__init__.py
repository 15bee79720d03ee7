"""Solvers: how a model is propagated between events.

``Analytic()`` is exact for linear models (matrix exponential in divided-difference form);
``ODE()`` integrates any model with diffrax between events (``method="auto"``: Tsit5, retried with Kvaerno5
by :func:`pkpd.simulate` where it fails); ``Auto()`` picks ``Analytic`` exactly when
``model.is_linear`` and never otherwise, and falls back to a stiff ODE solve for subjects whose exact result
fails its accuracy check.
"""

from ._solvers import ODE as ODE
from ._solvers import ODE_METHODS as ODE_METHODS
from ._solvers import Analytic as Analytic
from ._solvers import Auto as Auto
from ._solvers import resolve_solver as resolve_solver
