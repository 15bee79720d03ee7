"""pkpd.Simulator (one design, many parameter sets), batch-size buckets and compile economy of the public call.

Compilations are counted with JAX's own compile events (:mod:`jax.monitoring`): tracing a program
(``/jax/core/compile/jaxpr_trace_duration``) and compiling it or reading it from the persistent cache
(``/jax/core/compile/backend_compile_duration``), for every program, the kernel's and the small eager ones.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pandas as pd
import pytest

import pkpd
from pkpd.engine import bucket_size
from pkpd.errors import DatasetError, ModelSpecError

_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def count_compilations():
    """Counts JAX compile events (traces and backend compilations) inside the block: ``with ... as n: ...;
    n[0]``."""
    n = [0]

    def listener(event, duration, **kwargs):
        if event in _EVENTS:
            n[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield n
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def w1_like(n: int, seed: int = 0) -> pd.DataFrame:
    """W1's design (2-cmt oral, 10 mg q12h x 14 as one ADDL record, hourly observations 0..168), 20 % IIV."""
    rng = np.random.default_rng(seed)
    cl = 5.0 * np.exp(0.2 * rng.standard_normal(n))
    v1 = 50.0 * np.exp(0.2 * rng.standard_normal(n))
    t_obs = np.arange(169.0)
    per = t_obs.size + 1
    is_dose = np.tile(np.r_[True, np.zeros(t_obs.size, bool)], n)
    return pd.DataFrame(
        {
            "ID": np.repeat(np.arange(1, n + 1), per),
            "TIME": np.tile(np.r_[0.0, t_obs], n),
            "EVID": is_dose.astype(int),
            "AMT": np.where(is_dose, 10.0, 0.0),
            "CMT": np.where(is_dose, 1, 2),
            "II": np.where(is_dose, 12.0, 0.0),
            "ADDL": np.where(is_dose, 13, 0),
            "CLI": np.repeat(cl, per),
            "V1I": np.repeat(v1, per),
        }
    )


PARAMS = {"CL": "CLI", "V1": "V1I", "Q": 10, "V2": 100, "KA": 1}


def test_bucket_ladder():
    sizes = [bucket_size(n) for n in range(1, 5000)]
    assert min(sizes) == 8
    assert all(b >= n for n, b in zip(range(1, 5000), sizes))
    ladder = sorted(set(sizes))
    assert all(b / a <= 1.25 + 1e-12 for a, b in zip(ladder, ladder[1:]))
    assert bucket_size(100) == bucket_size(110) == 112 and bucket_size(10_000) == 10_240


def test_simulator_matches_simulate_and_reuses_design():
    df = w1_like(12)
    sim = pkpd.Simulator(df, "2cmt_oral")
    assert sim.n_subjects == 12 and sim.batch_size == bucket_size(12)
    a = sim(PARAMS)
    b = pkpd.simulate(df, "2cmt_oral", PARAMS)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns[: len(df.columns)]) == list(df.columns) and len(a) == len(df)
    # a second parameter set on the same design gives what a fresh public call gives
    p2 = dict(PARAMS, CL="CLI*1.3", KA=0.7)
    pd.testing.assert_frame_equal(sim(p2), pkpd.simulate(df, "2cmt_oral", p2))
    # the design was read once: changing the frame afterwards does not change the Simulator's records
    df.loc[0, "AMT"] = 20.0
    pd.testing.assert_frame_equal(sim(PARAMS), a)


def test_public_call_reuses_the_last_prepared_dataframe(monkeypatch):
    """pkpd.simulate keeps the last prepared DataFrame by a hash of its content: a second call with the same
    records and other parameters prepares nothing (the parameter checks still run and give the fresh call's
    result); the same frame changed in place, or with another dtype, is prepared again."""
    import importlib

    sim_mod = importlib.import_module("pkpd.simulate")  # the module (pkpd.simulate is also the function)

    made = []
    real_init = sim_mod._Design.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(sim_mod._Design, "__init__", counting)
    monkeypatch.setattr(sim_mod, "_LAST_DESIGN", {})
    df = w1_like(5)
    p2 = dict(PARAMS, CL="CLI*1.3", KA=0.7)
    a = pkpd.simulate(df, "2cmt_oral", PARAMS)
    b = pkpd.simulate(df, "2cmt_oral", p2)
    assert len(made) == 1
    pd.testing.assert_frame_equal(b, pkpd.Simulator(df, "2cmt_oral")(p2))
    assert len(made) == 2  # (the Simulator above prepared its own design)
    with pytest.raises(ModelSpecError, match="needs parameter"):  # the new parameter set is still checked
        pkpd.simulate(df, "2cmt_oral", {"CL": 1.0})
    df.loc[0, "AMT"] = 20.0  # changed in place: prepared again, and the result follows the change
    c = pkpd.simulate(df, "2cmt_oral", PARAMS)
    assert len(made) == 3 and not c["CP"].equals(a["CP"])
    pd.testing.assert_frame_equal(c, pkpd.Simulator(df, "2cmt_oral")(PARAMS))
    made.clear()
    pkpd.simulate(df.astype({"II": "float32"}), "2cmt_oral", PARAMS)  # other dtypes: another key
    pkpd.simulate(df, "2cmt_oral", PARAMS, grid="0:4:1")  # other options: another key
    assert len(made) == 2


def test_simulator_checks_each_parameter_set():
    df = w1_like(3)
    sim = pkpd.Simulator(df, "2cmt_oral")
    with pytest.raises(ModelSpecError, match="needs parameter"):
        sim({"CL": 5, "V1": 50})
    with pytest.raises(DatasetError, match="references column WT"):
        sim(dict(PARAMS, CL="5*WT/70"))
    with pytest.raises(DatasetError, match="parameter CL"):
        sim(dict(PARAMS, CL="CLI-100"))
    with pytest.raises(ModelSpecError, match="parameter file or mapping is required"):
        sim()
    # the same messages as the public call
    for bad in (dict(PARAMS, CL="5*WT/70"), dict(PARAMS, CL="CLI-100")):
        with pytest.raises(DatasetError) as e1:
            sim(bad)
        with pytest.raises(DatasetError) as e2:
            pkpd.simulate(df, "2cmt_oral", bad)
        assert str(e1.value) == str(e2.value)


def test_padding_subjects_are_dropped():
    for n in (1, 9, 13):
        df = w1_like(n, seed=n)
        out = pkpd.simulate(df, "2cmt_oral", PARAMS)
        assert len(out) == len(df)
        # each subject alone gives the same concentrations as in the padded batch
        one = pkpd.simulate(df[df.ID == n].reset_index(drop=True), "2cmt_oral", PARAMS)
        np.testing.assert_allclose(out.loc[df.ID == n, "CP"].to_numpy(), one["CP"].to_numpy(), rtol=1e-13, atol=0)


def test_no_compilation_for_new_parameters_or_nearby_n():
    """After one call, a second parameter set, a Simulator of a dataset of another size within the same
    bucket, and the public call on that dataset compile nothing (the public call has no seed: no random
    draws)."""
    df100, df110 = w1_like(100, seed=1), w1_like(110, seed=2)
    assert bucket_size(100) == bucket_size(110)
    sim = pkpd.Simulator(df100, "2cmt_oral")
    sim(PARAMS)
    pkpd.simulate(df100, "2cmt_oral", PARAMS)
    with count_compilations() as n:
        out2 = sim(dict(PARAMS, CL="CLI*1.2", Q=12.5))
    assert n[0] == 0
    with count_compilations() as n:
        out3 = pkpd.Simulator(df110, "2cmt_oral")(PARAMS)
        out4 = pkpd.simulate(df110, "2cmt_oral", dict(PARAMS, V2=80))
    assert n[0] == 0
    assert len(out2) == len(df100) and len(out3) == len(out4) == len(df110)
    assert np.all(np.isfinite(out3["CP"])) and not np.allclose(out3["CP"], out4["CP"])
