"""Population and individual fitting: model files, Laplace maximum likelihood, NUTS, SVI, forecasting."""

from .api import fit
from .bayes import BayesFit, describe_priors, fit_nuts, fit_svi, load_netcdf
from .forecast import Forecast, forecast
from .laplace import FitError, fit_laplace
from .options import NutsOptions, SviOptions
from .problem import Problem, build_problem
from .result import FitResult, OutputExistsError, build_result
from .spec import CovariateEffect, Observation, Parameter, PopulationModel, load_model

__all__ = [
    "CovariateEffect",
    "Observation",
    "Parameter",
    "PopulationModel",
    "load_model",
    "Problem",
    "build_problem",
    "fit_laplace",
    "FitError",
    "fit",
    "FitResult",
    "OutputExistsError",
    "build_result",
    "Forecast",
    "forecast",
    "fit_nuts",
    "fit_svi",
    "NutsOptions",
    "SviOptions",
    "BayesFit",
    "describe_priors",
    "load_netcdf",
]
