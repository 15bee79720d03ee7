"""Shared test configuration: float64 everywhere, locations of shared reference data."""

from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NMTESTS = SHARED / "conformance" / "nmtests"
if not NMTESTS.is_dir():  # a copy shipped with the tests keeps them runnable without ../shared
    NMTESTS = ROOT / "tests" / "data" / "nmtests"


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
