"""Structural PK models and the built-in model library."""

from ._base import CompartmentModel as CompartmentModel
from ._base import Output as Output
from ._base import Param as Param
from ._base import Route as Route
from .library import describe_model as describe_model
from .library import get_model as get_model
from .library import list_models as list_models
from .library import register_model as register_model
from .user import UserModel as UserModel
from .user import compile_structure as compile_structure
from .user import load_user_model as load_user_model
