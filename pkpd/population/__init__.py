"""Population simulation of multimodal analgesic regimens with pain-driven PCA and PRN rescue.

One patient's state stacks every drug of the regimen (each drug's linear compartment model plus an
effect compartment) into one linear system ``dx/dt = K x + inputs``. Time runs on a grid of ``dt_h``
(default 5 min) from the earliest pre-operative dose to the horizon (t = 0 is the end of surgery):

* between grid points the state is propagated **exactly** with ``expm(K dt)`` (per patient);
* scheduled doses (with their lags, bioavailability, split routes and zero-order infusions) enter
  **exactly** at their own times, not snapped to the grid: a bolus at ``s`` inside a step contributes
  ``expm(K (t_k - s)) b``, an infusion contributes ``integral expm(K (t_k - u)) r du`` over its overlap;
* pain (NRS) is evaluated at every grid point from the effect-site concentrations (:mod:`pkpd.pd`,
  :mod:`pkpd.pain`); a patient asks for PCA or PRN rescue with the NRS-driven hazard of
  :class:`~pkpd.pain.DemandModel`. In the **exact** mode each request is a Bernoulli event on the grid
  (probability ``1 - exp(-lambda dt)``), granted only if the lockout / minimum interval, the hourly or
  24-h cap, the time window and the NRS threshold allow it; a granted dose is then an exact bolus event at
  that grid time. The **relaxed** mode replaces each event by its expectation (smooth thresholds, a
  mean-field lockout), so outcomes are differentiable with ``jax.grad`` (used by the optimizer).

Because the realized doses are ordinary events, the concentrations of an exact run can be reproduced by
:func:`pkpd.simulate` from the dose record (:meth:`PopulationResult.dose_records`); the tests do so.

Randomness is keyed by ``(seed, patient ID)`` so a patient's parameters and demand draws do not depend on
the batch it runs in or on the other patients (common random numbers across regimens).

Modules (each imports only those above it; none imports :mod:`regimens`):

* :mod:`~pkpd.population.protocol`: :class:`RegimenLike`, what the simulator reads of a regimen;
* :mod:`~pkpd.population.options`: :class:`SimOptions`, :func:`mme_factor`;
* :mod:`~pkpd.population.blocks`: one drug's block of the stacked system, host-side matrix exponentials;
* :mod:`~pkpd.population.draws`: variability draws keyed by (seed, patient ID, stream), :func:`variability_columns`;
* :mod:`~pkpd.population.pd_arrays`, :mod:`~pkpd.population.arrays`: the kernel's inputs for one chunk of patients;
* :mod:`~pkpd.population.kernel`: the compiled per-patient kernel and its fixed-order sums;
* :mod:`~pkpd.population.results`: :class:`PopulationResult`, the outcome names, collecting the chunks' outputs;
* :mod:`~pkpd.population.plan`: :class:`RegimenPlan`, a regimen prepared for one population;
* :mod:`~pkpd.population.simulate`, :mod:`~pkpd.population.relaxed`: :func:`simulate_regimen` and the
  differentiable programs of the optimizer;
* :mod:`~pkpd.population.run`: long runs chunk by chunk on disk (resumable, multi-process);
* :mod:`~pkpd.population.report`: the tables and figures of ``pkpd simulate --regimen``.
"""

from __future__ import annotations

from .draws import variability_columns
from .options import IV_MME, SimOptions, mme_factor
from .plan import RegimenPlan
from .protocol import RegimenLike
from .relaxed import relaxed_objective, relaxed_program, relaxed_rows
from .report import plot_bands, plot_mme, population_headline, write_population_outputs
from .results import OUTCOMES, PopulationResult
from .run import KEEP_TRAJECTORIES, STORE_CHUNK_PATIENTS, STORE_KIND, simulate_regimen_stored
from .simulate import simulate_regimen

__all__ = [
    "IV_MME",
    "KEEP_TRAJECTORIES",
    "OUTCOMES",
    "PopulationResult",
    "RegimenLike",
    "RegimenPlan",
    "STORE_CHUNK_PATIENTS",
    "STORE_KIND",
    "SimOptions",
    "mme_factor",
    "plot_bands",
    "plot_mme",
    "population_headline",
    "relaxed_objective",
    "relaxed_program",
    "relaxed_rows",
    "simulate_regimen",
    "simulate_regimen_stored",
    "variability_columns",
    "write_population_outputs",
]
