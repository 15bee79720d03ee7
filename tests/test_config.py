"""pkpd.configure: the precision and the persistent compilation cache, set in one place (issue 24 part 4).

``import pkpd`` applies the environment's defaults through the same function (checked in a subprocess); the
tests here switch the settings of this process and restore them afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import pkpd
from pkpd import config
from pkpd.errors import PKPDError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore():
    """Whatever a test sets, this process goes back to its settings (the suite runs in float64)."""
    before = config.current()
    yield
    pkpd.configure(precision=before.precision, cache=before.cache if before.cache is not None else "off")
    assert config.current() == before


def test_precision_switch():
    assert pkpd.configure(precision="float32").precision == "float32"
    assert not jax.config.jax_enable_x64 and jnp.ones(2).dtype == jnp.float32
    assert pkpd.configure(precision="FLOAT64").precision == "float64"  # case-insensitive
    assert jax.config.jax_enable_x64 and jnp.ones(2).dtype == jnp.float64
    assert pkpd.configure(precision="auto").precision == "float64"  # the tests run on CPU


def test_cache_directory_and_off(tmp_path):
    where = tmp_path / "a" / "cache"
    cfg = pkpd.configure(cache=where)
    assert cfg.cache == where and where.is_dir()  # created
    assert jax.config.jax_compilation_cache_dir == str(where)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == config.MIN_COMPILE_TIME_S
    assert pkpd.configure(cache="off").cache is None
    assert jax.config.jax_compilation_cache_dir is None
    assert jnp.sum(jnp.arange(3.0)) == 3.0  # compiling without a cache works
    assert pkpd.configure(cache=str(where)).cache == where  # a str works too


def test_idempotent(tmp_path, monkeypatch):
    """Settings already in force are left alone: no JAX setting is updated, the cache is not reopened."""
    first = pkpd.configure(precision="float64", cache=tmp_path)
    calls = []
    update = jax.config.update
    monkeypatch.setattr(jax.config, "update", lambda *a: (calls.append(a), update(*a)))
    assert pkpd.configure(precision="float64", cache=tmp_path) == first
    assert pkpd.configure() == first  # None: unchanged
    assert pkpd.configure(precision=None, cache=None) == first
    assert calls == []
    pkpd.configure(precision="float32")
    assert calls == [("jax_enable_x64", False)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precision": "float16"}, "precision must be one of float64, float32, auto, got 'float16'"),
        ({"precision": 64}, "precision must be one of float64, float32, auto, got 64"),
        ({"cache": 3}, "cache must be a directory or 'off', got 3"),
        ({"cache": "  "}, "cache must be a directory or 'off', got an empty string"),
    ],
)
def test_bad_values_give_a_clear_error(kwargs, match):
    before = config.current()
    with pytest.raises(config.ConfigurationError, match=match) as err:
        pkpd.configure(**kwargs)
    assert isinstance(err.value, PKPDError) and isinstance(err.value, ValueError)  # the CLI's error boundary
    assert config.current() == before


def test_a_cache_directory_that_cannot_be_made_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(config.ConfigurationError, match="cannot use .*file/cache as the compilation cache"):
        pkpd.configure(cache=blocker / "cache")


def test_environment_defaults(tmp_path, monkeypatch):
    pkpd.configure(cache="off")  # JAX has no cache directory: the environment's is used
    monkeypatch.setenv("PKPD_PRECISION", "float32")
    monkeypatch.setenv("PKPD_JAX_CACHE", "off")
    assert config.environment_defaults() == {"precision": "float32", "cache": "off"}
    monkeypatch.delenv("PKPD_PRECISION")
    monkeypatch.delenv("PKPD_JAX_CACHE")
    assert config.environment_defaults() == {"precision": "float64", "cache": str(config.DEFAULT_CACHE_DIR)}
    monkeypatch.setenv("PKPD_PRECISION", "nonsense")  # import pkpd never fails on it: float64
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert config.environment_defaults()["precision"] == "float64"
    monkeypatch.setenv("PKPD_PRECISION", "auto")
    assert config.environment_defaults()["precision"] == "float64"  # JAX_PLATFORMS=cpu
    pkpd.configure(cache=tmp_path)  # a directory JAX was given (JAX_COMPILATION_CACHE_DIR) wins
    assert config.environment_defaults()["cache"] is None


def test_import_applies_the_environment_through_configure(tmp_path):
    """A fresh process: PKPD_PRECISION and PKPD_JAX_CACHE as configure() applies them at import."""
    where = tmp_path / "jaxcache"
    env = dict(os.environ, PKPD_PRECISION="float32", PKPD_JAX_CACHE=str(where), PYTHONPATH=str(ROOT))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    code = (
        "import jax, pkpd; c = pkpd.config.current(); "
        "print(c.precision, c.cache, jax.config.jax_enable_x64, jax.config.jax_compilation_cache_dir)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["float32", str(where), "False", str(where)]
    assert where.is_dir()
