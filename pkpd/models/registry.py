"""Where a model is found by name: the built-in grammar's name pattern and the registry of named models.

:mod:`pkpd.models.library` (built-in and hand-built models, :func:`~pkpd.models.get_model`) and
:mod:`pkpd.models.user` (models written in a ``[structure]`` section) both register here, so neither imports
the other's internals.
"""

from __future__ import annotations

import re

from ._base import CompartmentModel

__all__ = ["BUILTIN_NAME", "REGISTRY"]

#: Names of the built-in grammar, ``{n}cmt_{input}[_effect][_metabolite][_mm]`` (reserved: a registered or
#: user-written model cannot take one).
BUILTIN_NAME = re.compile(r"^([123])cmt_(iv|oral|dual|zofo|transit(\d+)|weibull)((?:_effect|_metabolite|_mm)*)$")

#: Models registered by name (hand-built library models and user-written ones); read by ``get_model``.
REGISTRY: dict[str, CompartmentModel] = {}
