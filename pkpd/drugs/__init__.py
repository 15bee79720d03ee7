"""Drug library: sourced population-PK parameter sets for the built-in models (see :mod:`.library`)."""

from ._base import Covariate, Drug, Param, Source
from .library import get_drug, list_drugs
from .structure import with_structure

__all__ = ["Covariate", "Drug", "Param", "Source", "get_drug", "list_drugs", "with_structure"]
