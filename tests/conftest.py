"""Shared test configuration: float64 everywhere, locations of shared reference data."""

from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
#: The NONMEM conformance set (mrgsolve/nmtests, see its README): a copy shipped with the tests, so that a bare
#: clone runs it; tests/test_conformance.py checks the copy against ../shared/conformance/nmtests when present.
NMTESTS = ROOT / "tests" / "data" / "nmtests"
SHARED_NMTESTS = SHARED / "conformance" / "nmtests"


@pytest.fixture(scope="session")
def nmtests_dir() -> Path:
    return NMTESTS


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled-program caches after each test module: a whole-suite run in one process
    otherwise accumulates thousands of executables (a CI run once crashed inside XLA's compiler late in
    such a run). Programs shared between modules simply compile again."""
    yield
    jax.clear_caches()


#: Test files that take the longest (minutes, mostly compilation), run first: `make test` runs
#: `pytest -n 2 --dist loadfile`, which hands whole files to its two workers in collection order, so long
#: files started last would leave one worker idle at the end (longest-first keeps both busy).
LONG_FILES = (
    "test_scaleout.py",
    "test_optimize.py",
    "test_notebooks.py",
    "test_report.py",
    "test_fit_bayes.py",
    "test_fit_recovery.py",
    "test_fit_pd.py",
    "test_regimen_sim.py",
    "test_precision.py",
    "test_fit_laplace.py",
    "test_conformance.py",
    "test_ode_vs_analytic.py",
    "test_properties.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda it: rank.get(it.path.name, len(LONG_FILES)))  # stable: file order kept otherwise
