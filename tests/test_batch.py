"""pkpd.batch in one process (no compilation): the chunk store, chunk assignment and sizing, settings errors,
and the scale-out command-line options (`pkpd devices`, bad --devices/--precision, a store of another run).
The sharded runs themselves are in test_scaleout.py (8 virtual devices and 2 processes need subprocesses)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cli_helpers import cli_output, runner

from cli import app
from pkpd import batch


def _table(lo: int, hi: int) -> pd.DataFrame:
    ids = np.arange(lo, hi)
    return pd.DataFrame(
        {
            "ID": ids + 1,
            "X": np.sqrt(ids + 0.1) / 3.0,
            "T_FIRST": np.where(ids % 2, np.nan, ids * 0.1),
            "SAFE": ids % 3 != 0,
            "WHY": ["" if i % 2 else f"limit {i}; other" for i in ids],
            "N": (ids * 7).astype(np.int64),
            "SEX": ["female", "male"][0] * 1,
        }
    )


def test_chunk_store_round_trip_is_exact(tmp_path):
    """Floats bit for bit (17 digits), NaN, empty strings, booleans and ints keep their dtypes; arrays exact."""
    st = batch.ChunkStore.open(tmp_path / "s", batch.run_identity(kind="t", n=6), 2)
    parts = [_table(0, 3), _table(3, 6)]
    for i, df in enumerate(parts):
        st.write(i, {"patients": df}, {"times": {"a_s": 1.5 * (i + 1)}}, arrays={"nrs": np.linspace(0, 1, 7) / 3})
    merged, infos = st.merge("patients", expect_ids=np.arange(1, 7))
    pd.testing.assert_frame_equal(merged, pd.concat(parts, ignore_index=True), check_exact=True)
    assert [i["times"]["a_s"] for i in infos] == [1.5, 3.0]
    assert np.array_equal(st.read_arrays(1)["nrs"], np.linspace(0, 1, 7) / 3)
    assert not list((tmp_path / "s").glob(".tmp-*"))  # written by rename only


def test_chunk_store_resume_and_identity(tmp_path):
    ident = batch.run_identity(kind="t", n=6, seed=1)
    st = batch.ChunkStore.open(tmp_path, ident, 3)
    st.write(0, {"patients": _table(0, 2)})
    assert st.missing() == [1, 2]
    assert batch.ChunkStore.open(tmp_path, ident, 3, resume=True).done() == [0]  # resumed: kept
    with pytest.raises(batch.BatchError, match="belongs to another run.*seed"):
        batch.ChunkStore.open(tmp_path, batch.run_identity(kind="t", n=6, seed=2), 3, resume=True)
    with pytest.raises(batch.BatchError, match="cannot merge.*2 chunk"):
        st.merge("patients")
    assert batch.ChunkStore.open(tmp_path, ident, 3).done() == []  # without resume: cleared
    with pytest.raises(batch.BatchError, match="does not exist"):
        batch.ChunkStore.open(tmp_path / "none", ident, 3, join=True)


def test_merge_refuses_lost_or_duplicated_patients(tmp_path):
    st = batch.ChunkStore.open(tmp_path, batch.run_identity(kind="t"), 2)
    st.write(0, {"patients": _table(0, 3)})
    st.write(1, {"patients": _table(2, 5)})  # patient 3 in both chunks
    with pytest.raises(batch.BatchError, match="repeat patient IDs"):
        st.merge("patients")
    st.write(1, {"patients": _table(4, 6)})  # patient 4 in none
    with pytest.raises(batch.BatchError, match="expected 6 patients"):
        st.merge("patients", expect_ids=np.arange(1, 7))


def test_assign_chunks_partitions_deterministically():
    chunks = [0, 2, 3, 5, 8, 9, 11]
    shares = [batch.assign_chunks(chunks, i, 3) for i in range(3)]
    assert shares == [[0, 5, 11], [2, 8], [3, 9]]
    assert sorted(sum(shares, [])) == chunks
    with pytest.raises(batch.BatchError):
        batch.assign_chunks(chunks, 3, 3)


def test_chunk_rows_override_and_cpu_default():
    with batch.configured(chunk_size=300):
        assert batch.chunk_rows(1e6) == 300  # the configured size wins
    rows = batch.chunk_rows(1e4, multiple=64)
    assert rows % 64 == 0 and 64 <= rows <= batch.CPU_CHUNK_ROWS
    assert batch.chunk_rows(1e15, multiple=64) == 64  # never below one multiple
    assert batch.config().chunk_size is None  # restored after the block


@pytest.mark.parametrize(
    "kw, match",
    [({"devices": 0}, "positive integer"), ({"chunk_size": 2.5}, "positive"), ({"memory_fraction": 0}, r"\(0, 1\]")],
)
def test_configure_rejects_bad_values(kw, match):
    with pytest.raises(batch.BatchError, match=match):
        batch.configure(**kw)


def test_distributed_settings_checked(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert batch.init_distributed() == (0, 1)  # nothing asked for: one process, nothing started
    with pytest.raises(batch.BatchError, match="missing process id"):
        batch.init_distributed("127.0.0.1:1234", 2)
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    with pytest.raises(batch.BatchError, match="process id 2 must be in 0 .. 1"):
        batch.init_distributed("127.0.0.1:1234", 2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(batch.BatchError, match="JAX_NUM_PROCESSES must be an integer"):
        batch.init_distributed()


def test_set_precision_rejects_unknown():
    with pytest.raises(batch.BatchError, match="float64, float32, auto"):
        batch.set_precision("float16")
    assert batch.set_precision(None) == "float64"  # the tests run in float64 (conftest)


def test_devices_command_prints_what_jax_sees():
    res = runner.invoke(app, ["devices"])
    assert res.exit_code == 0, cli_output(res)
    for text in (
        "platform: cpu",
        "process: 0 of 1",
        "sharded over 1",
        "precision: float64 (x64 on",
        "device 0: cpu",
        "host memory available",
    ):
        assert text in res.output, text


@pytest.mark.parametrize(
    "args, match",
    [
        (["devices", "--precision", "float16"], "precision must be one of"),
        (["simulate", "--regimen", "C1", "--population", "4", "--devices", "9"], "9 devices asked for"),
        (["simulate", "--regimen", "C1", "--num-processes", "2"], "missing"),
        (["trial", "--population", "2", "--devices", "9"], "xla_force_host_platform_device_count=9"),
    ],
)
def test_scaleout_options_clear_errors(tmp_path, args, match):
    res = runner.invoke(app, args + ["--out", str(tmp_path / "o")] if args[0] != "devices" else args)
    assert res.exit_code == 1
    assert match in cli_output(res) and "Traceback" not in cli_output(res)


def test_dataset_mode_refuses_population_options(tmp_path):
    data, params = tmp_path / "d.csv", tmp_path / "p.toml"
    data.write_text("ID,TIME,AMT,EVID\n1,0,100,1\n1,1,0,0\n")
    params.write_text('model = "1cmt_iv"\n[parameters]\nCL = 1\nV = 10\n')
    res = runner.invoke(app, ["simulate", str(data), "--params", str(params), "--devices", "1", "--resume"])
    assert res.exit_code == 1 and "--devices, --resume apply to population runs" in cli_output(res)


def test_trial_resume_of_another_run_is_refused(tmp_path):
    """--resume on a directory whose chunk store holds another trial (here: another population size): a
    one-line error naming what differs, before anything is computed."""
    out = tmp_path / "trial"
    ident = batch.run_identity(kind="spine72_trial", n=5, seed=1, chunk=50, settings="x")
    batch.ChunkStore.open(out / "chunks", ident, 1)
    res = runner.invoke(app, ["trial", "--population", "3", "--out", str(out), "--resume"])
    assert res.exit_code == 1
    assert "belongs to another run" in cli_output(res) and "Traceback" not in cli_output(res)
    assert json.loads((out / "chunks" / "store.json").read_text())["identity"]["n"] == 5  # left as it was
