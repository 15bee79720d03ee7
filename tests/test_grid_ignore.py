"""Output grids, NONMEM IGNORE/ACCEPT record filters and chunk cleanup of population runs (issue 25, items
3 and 6).

* ``grid=`` / ``--grid START:END:STEP``: parsing and its errors; the grid rows against the closed-form
  one-compartment oral solution; the dataset's own predictions unchanged by the grid (NOCB and LOCF with a
  time-varying covariate); ``--plot`` draws one line per ID on the grid with units and a per-ID legend.
* ``ignore=`` / ``accept=`` / ``--ignore`` / ``--accept``: the comment column ``C`` (its flagged rows not
  simulated, never a covariate), ``IGNORE=#``/``@`` characters, condition lists, one clear error per bad
  condition, row numbers of the file in later errors.
* ``OUT/chunks`` removed after a successful ``simulate --regimen`` unless ``--keep-chunks``; kept when the
  run fails; ``--resume`` on a finished run says there is nothing to resume.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cli_helpers import cli_output, runner

import pkpd
from cli import app
from pkpd import batch
from pkpd.data import (
    GRID_COLUMN,
    MAX_GRID_POINTS,
    RecordFilterError,
    add_grid,
    filter_records,
    parse_grid,
    validate_dataset,
)
from pkpd.simulate import profiles_figure

# ---------------------------------------------------------------------------------------------- grid parsing


def test_grid_range_includes_end_and_is_exact_in_decimal():
    g = parse_grid("0:24:0.5")
    assert g.size == 49 and g[0] == 0.0 and g[-1] == 24.0
    assert np.all(np.diff(g) == 0.5)
    g = parse_grid("0:1:0.1")
    assert g[3] == 0.3 and g[-1] == 1.0 and g.size == 11  # decimal steps, not 0.30000000000000004
    assert parse_grid(" 2 : 3 : 0.4 ").tolist() == [2.0, 2.4, 2.8]  # END not on the grid: not added
    assert parse_grid("-1:1:1").tolist() == [-1.0, 0.0, 1.0]


def test_grid_list_and_array_are_sorted_and_distinct():
    assert parse_grid("4,0,1,1").tolist() == [0.0, 1.0, 4.0]
    assert parse_grid(np.array([3.0, 1.5])).tolist() == [1.5, 3.0]
    assert parse_grid([0, 12]).tolist() == [0.0, 12.0]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("0:0:1", "END (0) must be greater than START (0)"),
        ("5:1:1", "END (1) must be greater than START (5)"),
        ("0:5:0", "STEP must be > 0"),
        ("0:5:-1", "STEP must be > 0"),
        ("a:5:1", "'a' is not a number"),
        ("0:nan:1", "'nan' is not a number"),
        ("0:5", "expected START:END:STEP"),
        ("0:5:1:2", "expected START:END:STEP"),
        ("0:10:1e-5", f"more than {MAX_GRID_POINTS:,}"),
        ("", "grid is empty"),
        ("1,x", "is not START:END:STEP"),
        ([np.nan, 1.0], "finite"),
        ([[0.0, 1.0]], "one-dimensional"),
        (["a"], "not numbers"),
    ],
)
def test_bad_grids_give_one_clear_error(spec, fragment):
    with pytest.raises(pkpd.GridError) as exc:
        parse_grid(spec)
    assert fragment in str(exc.value)
    assert isinstance(exc.value, pkpd.PKPDError)


# ------------------------------------------------------------------------------------------ grid simulation

DOSE = {1: 100.0, 2: 40.0}
KA, V = 1.2, 30.0


def _oral_dataset() -> pd.DataFrame:
    rows = []
    for i, wt in ((1, 70.0), (2, 90.0)):
        rows += [
            {"ID": i, "TIME": 0.0, "AMT": DOSE[i], "CMT": 1, "EVID": 1, "DV": np.nan, "WT": wt},
            {"ID": i, "TIME": 1.0, "AMT": 0.0, "CMT": 2, "EVID": 0, "DV": 1.0, "WT": wt},
            {"ID": i, "TIME": 6.0, "AMT": 0.0, "CMT": 2, "EVID": 0, "DV": 1.0, "WT": wt},
        ]
    return pd.DataFrame(rows)


PARAMS = {"CL": "4*(WT/70)**0.75", "V": V, "KA": KA}


def _cp_closed_form(t, dose, wt):
    """1-compartment oral, first-order absorption, bolus into the depot at 0 (mg/L)."""
    k = 4 * (wt / 70) ** 0.75 / V
    return dose * KA / (V * (KA - k)) * (np.exp(-k * t) - np.exp(-KA * t))


def test_grid_rows_match_the_closed_form_and_leave_the_records_unchanged():
    df = _oral_dataset()
    plain = pkpd.simulate(df, "1cmt_oral", PARAMS)
    out = pkpd.simulate(df, "1cmt_oral", PARAMS, grid="0:24:0.25")
    grid = out[out[GRID_COLUMN] == 1]
    assert len(grid) == 2 * 97 and len(out) == len(df) + 2 * 97
    assert set(grid["EVID"]) == {2} and set(grid["CMT"]) == {0} and grid["DV"].isna().all()
    assert list(out.columns[: len(df.columns) + 1]) == list(df.columns) + [GRID_COLUMN]  # no column invented
    for i, wt in ((1, 70.0), (2, 90.0)):
        g = grid[grid["ID"] == i]
        assert g["TIME"].tolist() == parse_grid("0:24:0.25").tolist()
        np.testing.assert_allclose(g["CP"], _cp_closed_form(g["TIME"].to_numpy(), DOSE[i], wt), rtol=1e-9, atol=1e-13)
    # the dataset's own rows: all there, in order, with the predictions a simulation without grid gives
    own = out[out[GRID_COLUMN] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(own.drop(columns=[GRID_COLUMN]), plain, check_exact=False, rtol=1e-12)
    # a grid time equal to a record time comes after the record (same state); a dose time shows the dose
    at1 = out[(out["ID"] == 1) & (out["TIME"] == 1.0)]
    assert at1[GRID_COLUMN].tolist() == [0, 1] and at1["CP"].nunique() == 1
    at0 = out[(out["ID"] == 1) & (out["TIME"] == 0.0)]
    assert at0[GRID_COLUMN].tolist() == [0, 1] and at0["DEPOT"].tolist() == [100.0, 100.0]


def test_grid_array_and_simulator_api():
    times = np.array([0.5, 2.0, 30.0])
    sim = pkpd.Simulator(_oral_dataset(), "1cmt_oral", grid=times)
    out = sim(PARAMS)
    g = out[(out[GRID_COLUMN] == 1) & (out["ID"] == 2)]
    np.testing.assert_allclose(g["CP"], _cp_closed_form(times, DOSE[2], 90.0), rtol=1e-9)
    assert sim.n_subjects == 2


@pytest.mark.parametrize("interpolation", ["nocb", "locf"])
def test_grid_with_a_time_varying_covariate_changes_no_record_prediction(interpolation):
    df = pd.DataFrame(
        {
            "ID": [1] * 5,
            "TIME": [0.0, 2.0, 5.0, 8.0, 12.0],
            "AMT": [100.0, 0, 0, 50, 0],
            "EVID": [1, 0, 0, 1, 0],
            "CMT": [1, 2, 2, 1, 2],
            "WT": [70.0, 70, 100, 100, 60],
        }
    )
    plain = pkpd.simulate(df, "1cmt_oral", PARAMS, interpolation=interpolation)
    out = pkpd.simulate(df, "1cmt_oral", PARAMS, interpolation=interpolation, grid="0:14:0.5")
    own = out[out[GRID_COLUMN] == 0]
    np.testing.assert_allclose(own["CP"].to_numpy(), plain["CP"].to_numpy(), rtol=1e-12)
    # grid rows copy the covariate the simulation uses then: NOCB the next record's, LOCF the previous one's
    w3 = out[(out[GRID_COLUMN] == 1) & (out["TIME"] == 3.0)]["WT"].item()
    assert w3 == (100.0 if interpolation == "nocb" else 70.0)


def test_grid_after_a_reset_that_goes_back_in_time():
    df = pd.DataFrame(
        {
            "ID": [1, 1, 1, 1],
            "TIME": [0.0, 4.0, 0.0, 4.0],
            "AMT": [100.0, 0, 100, 0],
            "EVID": [1, 0, 4, 0],
            "CMT": [1, 1, 1, 1],
        }
    )
    frame = validate_dataset(df)
    g = add_grid(frame, "0:6:2")
    assert g.frame["TIME"].tolist() == [0, 0, 2, 4, 4, 6, 0, 0, 2, 4, 4, 6]
    out = pkpd.simulate(df, "1cmt_iv", {"CL": 3.0, "V": 30.0}, grid="0:6:2")
    per = out[out[GRID_COLUMN] == 1]["CP"].to_numpy()
    np.testing.assert_allclose(per[:4], per[4:], rtol=1e-12)  # the second period repeats the first


def test_grid_refuses_a_dataset_column_named_grid_and_too_many_rows(monkeypatch):
    df = _oral_dataset().assign(GRID=1)
    with pytest.raises(pkpd.GridError, match="already has a column GRID"):
        pkpd.simulate(df, "1cmt_oral", PARAMS, grid="0:2:1")
    monkeypatch.setattr("pkpd.data.MAX_GRID_ROWS", 10)
    with pytest.raises(pkpd.GridError, match="the grid adds 14 rows"):
        pkpd.simulate(_oral_dataset(), "1cmt_oral", PARAMS, grid="0:6:1")


# ------------------------------------------------------------------------------------------ the CLI and plot


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


PARAM_FILE = 'model = "1cmt_oral"\n[parameters]\nCL = "4*(WT/70)**0.75"\nV = 30\nKA = 1.2\n'


def test_cli_grid_writes_grid_rows_and_refuses_a_bad_grid(tmp_path):
    data = tmp_path / "d.csv"
    _oral_dataset().to_csv(data, index=False, na_rep=".")
    params = _write(tmp_path, "p.toml", PARAM_FILE)
    out = tmp_path / "o.csv"
    res = runner.invoke(app, ["simulate", str(data), "-p", str(params), "-o", str(out), "--grid", "0:12:0.5"])
    assert res.exit_code == 0, cli_output(res)
    assert "(50 on the --grid)" in cli_output(res)
    got = pd.read_csv(out)
    g = got[got[GRID_COLUMN] == 1]
    np.testing.assert_allclose(
        g[g["ID"] == 1]["CP"], _cp_closed_form(g[g["ID"] == 1]["TIME"].to_numpy(), 100.0, 70.0), rtol=1e-9
    )
    for bad, fragment in (
        ("0:0:1", "END (0) must be greater than START (0)"),
        ("0:5:0", "STEP must be > 0"),
        ("x:1:1", "'x' is not a number"),
        ("0:1e9:1", "more than 1,000,000"),
    ):
        res = runner.invoke(
            app, ["simulate", str(data), "-p", str(params), "-o", str(tmp_path / "b.csv"), "--grid", bad]
        )
        text = cli_output(res)
        assert res.exit_code == 1 and fragment in text and "Traceback" not in text
        assert not (tmp_path / "b.csv").exists()


def test_cli_grid_is_for_dataset_mode_and_keep_chunks_for_regimen_mode(tmp_path):
    res = runner.invoke(app, ["simulate", "--regimen", "C1", "--grid", "0:1:1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "--grid apply to dataset mode" in cli_output(res)
    data = tmp_path / "d.csv"
    _oral_dataset().to_csv(data, index=False, na_rep=".")
    params = _write(tmp_path, "p.toml", PARAM_FILE)
    res = runner.invoke(app, ["simulate", str(data), "-p", str(params), "--keep-chunks"])
    assert res.exit_code == 1 and "--keep-chunks apply to population runs" in cli_output(res)


def _many_ids(n: int) -> pd.DataFrame:
    rows = []
    for i in range(1, n + 1):
        rows.append({"ID": i, "TIME": 0.0, "AMT": 100.0, "CMT": 1, "EVID": 1, "WT": 50.0 + i})
        rows += [{"ID": i, "TIME": t, "AMT": 0.0, "CMT": 2, "EVID": 0, "WT": 50.0 + i} for t in (1.0, 4.0, 12.0)]
    return pd.DataFrame(rows)


def test_plot_draws_dense_lines_with_units_and_a_per_id_legend(tmp_path):
    df = _many_ids(25)
    out = pkpd.simulate(df, "1cmt_oral", PARAMS, grid=np.linspace(0, 12, 97))
    fig, shown, total = profiles_figure(out, pkpd.get_model("1cmt_oral"))
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("TIME (h)", "CP (mg/L)")
    assert (shown, total) == (20, 25)
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:20] == [f"ID {i}" for i in range(1, 21)] and labels[20] == "CP at observation records"
    assert legend.get_title().get_text() == "first 20 of 25 IDs (5 not shown)"
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("ID ")]
    assert len(lines) == 20 and all(len(ln.get_xdata()) == 97 for ln in lines)  # the grid, not the 4 records
    # few IDs: no "not shown" title
    fig, shown, total = profiles_figure(out[out["ID"] <= 3], pkpd.get_model("1cmt_oral"))
    assert (shown, total) == (3, 3) and fig.axes[0].get_legend().get_title().get_text() == ""


def test_cli_plot_without_grid_uses_a_dense_grid(tmp_path):
    data = tmp_path / "d.csv"
    _many_ids(3).to_csv(data, index=False)
    params = _write(tmp_path, "p.toml", PARAM_FILE)
    png, out = tmp_path / "cp.png", tmp_path / "o.csv"
    res = runner.invoke(app, ["simulate", str(data), "-p", str(params), "-o", str(out), "--plot", str(png)])
    assert res.exit_code == 0, cli_output(res)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert GRID_COLUMN not in pd.read_csv(out).columns  # the CSV holds the records only
    from pkpd.simulate import dense_grid

    g = dense_grid(_many_ids(3))  # what the plot was drawn on
    assert g[0] == 0.0 and g[-1] == 12.0 and g.size == 481


def test_dense_grid_covers_additional_doses():
    from pkpd.simulate import dense_grid

    df = pd.DataFrame(
        {"ID": [1, 1], "TIME": [0.0, 1.0], "AMT": [10.0, 0], "EVID": [1, 0], "II": [12.0, 0], "ADDL": [3, 0]}
    )
    assert dense_grid(df)[-1] == 48.0  # 4 doses 12 h apart: to the end of the last interval


# -------------------------------------------------------------------------------------------- IGNORE/ACCEPT

COMMENTED = """C,ID,TIME,AMT,EVID,CMT,DV,WT
.,1,0,100,1,1,.,70
.,1,1,0,0,2,1.8,70
C,1,2,0,0,2,99,70
#,1,3,0,0,2,1,70
.,1,4,0,0,2,1.3,80
.,2,0,50,1,1,.,60
.,2,2,0,0,2,0.0,60
"""


def test_commented_row_is_not_simulated_and_c_is_not_a_covariate(tmp_path):
    data = _write(tmp_path, "d.csv", COMMENTED)
    out = pkpd.simulate(data, "1cmt_oral", PARAMS)
    assert len(out) == 5 and 2.0 not in out[out["ID"] == "1"]["TIME"].astype(float).tolist()
    assert "99" not in out["DV"].tolist() and out["C"].tolist() == ["."] * 5
    assert out.attrs["ignored_rows"] == 2
    assert "row 3" in out.attrs["ignored"] and "row 4" in out.attrs["ignored"]
    # the C column stays text (never converted like a covariate); a parameter file naming it is refused
    frame = validate_dataset(pd.read_csv(data, dtype=str).iloc[[0, 1]])
    assert frame["C"].tolist() == [".", "."]
    with pytest.raises(pkpd.DatasetError, match="column C is NONMEM's comment flag"):
        pkpd.simulate(data, "1cmt_oral", {**PARAMS, "CL": "4*C"})


def test_predictions_unchanged_by_dropping_a_commented_observation(tmp_path):
    data = _write(tmp_path, "d.csv", COMMENTED)
    out = pkpd.simulate(data, "1cmt_oral", PARAMS)
    clean = pd.read_csv(data, dtype=str)
    clean = clean[~clean["C"].isin(["C", "#"])].drop(columns="C")
    ref = pkpd.simulate(clean, "1cmt_oral", PARAMS)
    np.testing.assert_allclose(out["CP"].to_numpy(), ref["CP"].to_numpy(), rtol=1e-12)


def test_ignore_characters():
    df = pd.DataFrame({"ID": ["1", "1", "ID", "@x", "1"], "TIME": ["0", "1", "TIME", "0", "2"]})
    assert filter_records(df).frame["ID"].tolist() == ["1", "1", "ID", "@x", "1"]  # only '#' by default
    kept = filter_records(df, ignore="@")
    assert kept.frame["ID"].tolist() == ["1", "1", "1"] and kept.rows.tolist() == [1, 2, 5]
    assert "2 by IGNORE=@ (column ID) (rows 3, 4)" in kept.message()
    assert filter_records(df, ignore="IGNORE='I'").frame["ID"].tolist() == ["1", "1", "@x", "1"]


def test_ignore_and_accept_conditions():
    df = pd.DataFrame(
        {
            "ID": [1, 1, 1, 2, 2],
            "TIME": [0, 1, 30, 0, 2],
            "DV": [".", "0.0", "3", ".", "2"],
            "SEX": ["M", "M", "M", "F", "F"],
        }
    )

    def kept(**kw):
        return filter_records(df, **kw).rows.tolist()

    assert kept(ignore="(DV.EQ.0)") == [3, 5]  # '.' counts as 0 and '0.0' equals 0 numerically
    assert kept(ignore="IGNORE=(TIME.GT.24,ID.EQ.2)") == [1, 2]  # comma = or
    assert kept(ignore=["(TIME.GE.30)", "(SEX.EQ.F)"]) == [1, 2]
    assert kept(accept="(SEX.EQ.F)") == [4, 5]
    assert kept(accept="ACCEPT=(ID.NE.1,TIME.LT.1)") == [1, 4, 5]
    assert kept(accept="(TIME.LE.1)") == [1, 2, 4]
    assert kept(ignore="(DV == 3)") == [1, 2, 4, 5]
    assert kept(ignore="(SEX.EQ.'M')") == [4, 5]


@pytest.mark.parametrize(
    "ignore, accept, fragment",
    [
        ("(DV.XX.0)", None, "IGNORE condition 'DV.XX.0': unknown operator .XX."),
        ("(WTX.EQ.1)", None, "IGNORE condition 'WTX.EQ.1' names column WTX, which the dataset does not have"),
        (None, "(sex.EQ.F)", "names column sex, which the dataset does not have (found 'SEX'"),
        ("(SEX.GT.1)", None, "IGNORE condition 'SEX.GT.1': .GT. compares numbers, and column SEX holds 'M', 'F'"),
        ("(TIME.GT.abc)", None, "'abc' is not a number"),
        ("(DV.EQ.0,,TIME.GT.1)", None, "an empty condition"),
        ("(DV.EQ.)", None, "has no value"),
        ("(DV 0)", None, "IGNORE condition 'DV 0' is not COLUMN.OP.VALUE"),
        ("(DV.EQ.0", None, "unbalanced parentheses"),
        ("(DV.EQ.0)", "(ID.EQ.1)", "IGNORE conditions and ACCEPT conditions cannot be combined"),
    ],
)
def test_bad_conditions_give_one_error_naming_the_condition(ignore, accept, fragment):
    df = pd.DataFrame({"ID": [1, 2], "TIME": [0, 1], "DV": [".", "1"], "SEX": ["M", "F"]})
    with pytest.raises(RecordFilterError) as exc:
        filter_records(df, ignore=ignore, accept=accept)
    assert fragment in str(exc.value)
    assert len(exc.value.violations) == 1 and isinstance(exc.value, pkpd.DatasetError)


def test_errors_name_the_rows_of_the_file_after_ignored_rows(tmp_path):
    data = _write(
        tmp_path, "d.csv", "C,ID,TIME,AMT,EVID,CMT\n.,1,0,100,1,1\nC,1,1,abc,0,1\n.,1,2,0,0,1\n.,1,3,xyz,0,1\n"
    )
    with pytest.raises(pkpd.DatasetError) as exc:
        pkpd.simulate(data, "1cmt_iv", {"CL": 5, "V": 50})
    assert [v.rows for v in exc.value.violations] == [(4,)] and str(data) in str(exc.value)
    with pytest.raises(pkpd.DatasetError) as exc:  # a parameter problem on a kept row: that row of the file
        pkpd.simulate(data, "1cmt_iv", {"CL": "5 if TIME < 1.5 else -1", "V": 50}, ignore="(AMT.EQ.xyz)")
    assert [v.rows for v in exc.value.violations] == [(3,)]


def test_cli_ignore_and_accept(tmp_path):
    data = _write(tmp_path, "d.csv", COMMENTED)
    params = _write(tmp_path, "p.toml", PARAM_FILE)
    out = tmp_path / "o.csv"
    res = runner.invoke(app, ["simulate", str(data), "-p", str(params), "-o", str(out), "--ignore", "(TIME.GT.3)"])
    text = cli_output(res)
    assert res.exit_code == 0, text
    assert (
        "note: ignored 3 of 7 data rows: 1 commented (C in column C) (row 3); 1 by IGNORE=# (column C) "
        "(row 4); 1 by IGNORE=(TIME.GT.3) (row 5)" in text
    )
    assert len(pd.read_csv(out)) == 4
    res = runner.invoke(
        app, ["simulate", str(data), "-p", str(params), "-o", str(out), "--force", "--accept", "(ID.EQ.2)"]
    )
    assert res.exit_code == 0 and pd.read_csv(out)["ID"].tolist() == [2, 2]
    res = runner.invoke(
        app, ["simulate", str(data), "-p", str(params), "-o", str(tmp_path / "x.csv"), "--ignore", "(WT.GX.70)"]
    )
    assert res.exit_code == 1 and "IGNORE condition 'WT.GX.70': unknown operator .GX." in cli_output(res)
    assert "Traceback" not in cli_output(res) and not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------------------------------- chunk cleanup

SIM = ["simulate", "--regimen", "C1", "--population", "5"]


def test_chunks_removed_after_success_kept_with_keep_chunks(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, SIM + ["--out", str(out)])
    assert res.exit_code == 0, cli_output(res)
    assert not (out / "chunks").exists() and (out / "patients.csv").is_file() and (out / "run.json").is_file()
    assert "Removed the intermediate chunks" in cli_output(res)
    # --resume on the finished run: nothing to resume, nothing touched
    before = sorted(p.name for p in out.iterdir())
    res = runner.invoke(app, SIM + ["--out", str(out), "--resume"])
    assert res.exit_code == 1 and "nothing to resume in" in cli_output(res) and "--force" in cli_output(res)
    assert sorted(p.name for p in out.iterdir()) == before

    kept = tmp_path / "kept"
    res = runner.invoke(app, SIM + ["--out", str(kept), "--keep-chunks"])
    assert res.exit_code == 0, cli_output(res)
    assert (kept / "chunks" / "store.json").is_file() and list((kept / "chunks").glob("chunk-*.json"))
    # a finished run that kept its chunks resumes without recomputing, and then removes them
    res = runner.invoke(app, SIM + ["--out", str(kept), "--resume"])
    assert res.exit_code == 0, cli_output(res)
    assert not (kept / "chunks").exists()


def test_chunks_kept_when_the_run_fails(tmp_path, monkeypatch):
    import pkpd.population.report

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pkpd.population.report, "write_population_outputs", broken)
    out = tmp_path / "run"
    res = runner.invoke(app, SIM + ["--out", str(out)])
    assert res.exit_code == 1 and "disk full" in cli_output(res)
    assert (out / "chunks" / "store.json").is_file() and list((out / "chunks").glob("chunk-*.json"))


def test_remove_store_deletes_only_the_store_files(tmp_path):
    root = tmp_path / "chunks"
    st = batch.ChunkStore.open(root, batch.run_identity(kind="x", n=2), 2)
    st.write(0, {"patients": pd.DataFrame({"ID": [1], "V": [0.5]})})
    st.write(1, {"patients": pd.DataFrame({"ID": [2], "V": [1.5]})}, arrays={"a": np.zeros(3)})
    size = sum(p.stat().st_size for p in root.iterdir())
    assert batch.remove_store(root) == size and not root.exists()
    st = batch.ChunkStore.open(root, batch.run_identity(kind="x", n=2), 2)
    (root / "notes.txt").write_text("the user's")
    batch.remove_store(root)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]  # someone else's file: kept, and the folder
    assert batch.remove_store(tmp_path / "absent") == 0
