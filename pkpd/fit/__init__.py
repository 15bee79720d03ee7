"""Population and individual fitting: model files, Laplace maximum likelihood, NUTS, SVI, forecasting."""

from .laplace import FitError, fit_laplace
from .problem import Problem, build_problem
from .spec import CovariateEffect, Observation, Parameter, PopulationModel, load_model

__all__ = ["CovariateEffect", "Observation", "Parameter", "PopulationModel", "load_model", "Problem",
           "build_problem", "fit_laplace", "FitError"]
