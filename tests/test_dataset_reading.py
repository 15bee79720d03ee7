"""One reading of a dataset file for every command (issue 20, part 1).

`pkpd simulate`, `pkpd fit`, `pkpd forecast` and :func:`pkpd.nca.nca` read files with
:func:`pkpd.data.read_dataset` and coerce the standard columns with the same rules (``"."`` and blank
mean 0, DV blank is missing): an observation is the same row in every command, a row with too few
fields is an error naming it, any record with a DV the fitter does not use is reported, UTF-16 files are
decoded, semicolon/tab delimiters detected, and values too large for the likelihood refused with their
row and column. Nothing here compiles a fit: every check stops before the estimation.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import cli_output, runner

from cli import app
from pkpd.data import numeric_column, read_dataset, standard_columns, validate_dataset
from pkpd.errors import DatasetError
from pkpd.fit.problem import build_problem, unused_records
from pkpd.fit.spec import load_model
from pkpd.nca import nca

ROOT = Path(__file__).resolve().parents[1]
THEOPH = ROOT / "pkpd" / "datasets" / "theoph.csv"
MODEL = ROOT / "examples" / "models" / "theoph.toml"
N_OBS = 132  # observation records (EVID 0, MDV 0) of the shipped Theoph dataset


@pytest.fixture(scope="module")
def spec():
    return load_model(MODEL)


def _theoph_text() -> str:
    return THEOPH.read_text()


def _edit(rows: dict[int, dict[str, str]]) -> pd.DataFrame:
    """The Theoph dataset as strings with the given 0-based rows' cells replaced."""
    df = pd.read_csv(THEOPH, dtype=str, keep_default_na=False)
    for i, cells in rows.items():
        for c, v in cells.items():
            df.loc[i, c] = v
    return df


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def _one_error(exc: DatasetError) -> str:
    assert len(exc.violations) == 1, str(exc)
    return str(exc.violations[0])


# ------------------------------------------------------------------------------------ '.' and blank


def test_mdv_dot_and_blank_evid_mdv_are_observations_in_fit_as_in_simulate(spec, tmp_path):
    """Data row 4 (0-based 3) with MDV '.', row 5 with EVID and MDV blank: both observations (README: '.' and
    blank mean 0) in validate_dataset (simulate, NCA) and in the fit, which keeps all 132."""
    df = _edit({3: {"MDV": "."}, 4: {"EVID": "", "MDV": ""}})
    path = _write(df, tmp_path / "d.csv")
    sim = validate_dataset(path)
    assert int(((sim["EVID"] == 0) & (sim["MDV"] == 0)).sum()) == N_OBS
    prob = build_problem(path, spec)
    assert prob.n_obs == N_OBS
    assert 3 in prob.obs["row"].tolist() and 4 in prob.obs["row"].tolist()
    assert not any("not fitted" in n for n in prob.notes)
    # the same rule from the shared coercion (pkpd.data.standard_columns)
    cols = standard_columns(read_dataset(path))
    assert cols["MDV"][3] == 0 and cols["EVID"][4] == 0 and cols["MDV"][4] == 0


def test_dv_dot_means_zero_and_blank_dv_on_an_observation_is_an_error(spec):
    prob = build_problem(_edit({3: {"DV": "."}}), spec)
    assert prob.n_obs == N_OBS and prob.obs["dv"][list(prob.obs["row"]).index(3)] == 0.0
    with pytest.raises(DatasetError) as info:
        build_problem(_edit({3: {"DV": ""}}), spec)
    assert _one_error(info.value).startswith("row 4, column DV: DV must be a number on observation records")


def test_numeric_column_follows_the_dataset_rules():
    v = numeric_column(["1.5", ".", "", " 2 ", "abc", "inf", "1e3"])
    assert v[0] == 1.5 and v[3] == 2.0 and v[6] == 1000.0
    assert np.isnan(v[[1, 2, 4, 5]]).all()


# ------------------------------------------------------------------------- unused records are reported


def test_records_with_a_dv_that_are_not_fitted_are_reported(spec):
    """MDV 1 on an EVID 0 record and EVID 2 on a record with a DV: not fitted, and said (count and rows)."""
    df = _edit({5: {"MDV": "1"}, 7: {"EVID": "2", "MDV": "1"}})
    prob = build_problem(df, spec)
    assert prob.n_obs == N_OBS - 2
    rows, note = unused_records(df)
    assert rows.tolist() == [5, 7]
    assert note.startswith("2 records with a DV value are not fitted") and "rows 6, 8;" in note
    assert note in prob.notes
    # the unedited dataset: every record with a DV is fitted (dose rows are not observations)
    assert unused_records(pd.read_csv(THEOPH, dtype=str, keep_default_na=False))[1] is None


# ------------------------------------------------------------------------------------- ragged rows


TRUNCATED = "ID,TIME,AMT,DV,MDV,EVID,CMT\n1,0,4.02,0,1,1,1\n1,0.25,0,2.84,0,0,2\n1,0.57\n1,1,0,5,0,0,2\n"
TRUNCATED_MSG = "row 3: not a well-formed CSV table: too few fields, this row has 2 but the header has 7"


def test_truncated_row_is_an_error_for_every_reader(tmp_path, spec):
    path = tmp_path / "t.csv"
    path.write_text(TRUNCATED)
    for call in (read_dataset, validate_dataset, nca, lambda p: build_problem(p, spec)):
        with pytest.raises(DatasetError) as info:
            call(path)
        assert _one_error(info.value).startswith(TRUNCATED_MSG), call
        assert "delimiter comma ','" in str(info.value)
    from pkpd.fit.forecast import forecast

    with pytest.raises(DatasetError, match="too few fields"):
        forecast(MODEL, path)


def test_row_with_too_many_fields_names_the_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ID,TIME,AMT\n1,0,100\n1,1,0,7\n")
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    assert _one_error(info.value).startswith(
        "row 2: not a well-formed CSV table: too many fields, this row has 4 but the header has 3"
    )


@pytest.mark.parametrize("command", ["simulate", "fit", "forecast"])
def test_cli_truncated_row_one_message_nothing_written(tmp_path, command):
    data = tmp_path / "t.csv"
    data.write_text(TRUNCATED)
    out = tmp_path / "out"
    if command == "simulate":
        params = tmp_path / "p.toml"
        params.write_text('model = "1cmt_oral"\n[parameters]\nCL = 1\nV = 10\nKA = 1\n')
        out = tmp_path / "out.csv"
        args = ["simulate", str(data), "--params", str(params), "--out", str(out)]
    else:
        args = [command, str(data), "--model", str(MODEL), "--out", str(out)]
    res = runner.invoke(app, args)
    text = cli_output(res)
    assert res.exit_code == 1, text
    assert TRUNCATED_MSG in text and "Traceback" not in text
    assert not out.exists()


# ---------------------------------------------------------------------------- encodings and delimiters


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
def test_unicode_encodings_are_decoded(tmp_path, encoding):
    path = tmp_path / "d.csv"
    path.write_bytes(_theoph_text().encode(encoding))
    got = validate_dataset(path)
    want = validate_dataset(THEOPH)
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got, want)


def test_undecodable_utf16_names_the_encoding(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(codecs.BOM_UTF16_LE + "ID,TIME\n1,0\n".encode("utf-16-le") + b"\x00")  # odd byte count
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    msg = _one_error(info.value)
    assert "cannot decode the file as UTF-16" in msg and "\x00" not in msg


def test_binary_file_is_a_clean_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)))
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    assert "binary file (an Excel workbook?)" in _one_error(info.value)


def test_cli_utf16_dataset_is_simulated_without_nul_bytes(tmp_path):
    data = tmp_path / "d.csv"
    data.write_bytes(_theoph_text().encode("utf-16"))
    params = tmp_path / "p.toml"
    params.write_text('model = "1cmt_oral"\n[parameters]\nCL = 0.04\nV = 0.5\nKA = 1.5\n')
    res = runner.invoke(app, ["simulate", str(data), "--params", str(params), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 0, cli_output(res)
    assert "\x00" not in cli_output(res)
    out = pd.read_csv(tmp_path / "o.csv")
    assert len(out) == 144 and list(out.columns[:3]) == ["ID", "TIME", "AMT"]


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_semicolon_tab_pipe_delimiters_are_detected(tmp_path, sep):
    path = tmp_path / "d.csv"
    path.write_text(_theoph_text().replace(",", sep))
    pd.testing.assert_frame_equal(validate_dataset(path), validate_dataset(THEOPH))


def test_semicolon_with_decimal_commas_names_the_cells_and_the_comma(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("ID;TIME;AMT;DV\n1;0;4,02;0\n1;0,25;0;2,84\n")
    with pytest.raises(DatasetError) as info:
        validate_dataset(path)
    text = str(info.value)
    assert "row 2, column TIME: TIME must be a number (h) on every row; found '0,25'" in text
    assert "(a decimal comma? write decimals with a point" in text


def test_mixed_delimiters_name_the_row_and_the_delimiter(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("ID,TIME,AMT\n1,0,100\n1;1;0\n")
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    msg = _one_error(info.value)
    assert msg.startswith("row 2: not a well-formed CSV table: too few fields") and "delimiter comma ','" in msg


# ---------------------------------------------------------------------------- magnitudes in a fit


@pytest.mark.parametrize(
    "row, col, value, expect",
    [
        (0, "AMT", "1e300", "row 1, column AMT: AMT 1e+300 is too large for a fit"),
        (11, "TIME", "1e300", "row 12, column TIME: TIME 1e+300 is too large for a fit"),
        (2, "DV", "1e300", "row 3, column DV: DV 1e+300 is too large for a fit"),
        (0, "AMT", "2e15", "row 1, column AMT: AMT 2e+15 is too large for a fit"),
    ],
)
def test_values_too_large_for_the_likelihood_name_row_and_column(spec, row, col, value, expect):
    with pytest.raises(DatasetError) as info:
        build_problem(_edit({row: {col: value}}), spec)
    msg = _one_error(info.value)
    assert msg.startswith(expect) and "below 1e15" in msg


def test_large_but_plausible_values_are_accepted(spec):
    prob = build_problem(_edit({0: {"AMT": "4.02e6"}, 2: {"DV": "2.84e5"}}), spec)
    assert prob.n_obs == N_OBS


def test_cli_fit_amt_1e300_is_a_dataset_error_not_a_likelihood_error(tmp_path):
    data = _write(_edit({0: {"AMT": "1e300"}}), tmp_path / "d.csv")
    out = tmp_path / "fit"
    res = runner.invoke(app, ["fit", str(data), "--model", str(MODEL), "--out", str(out)])
    text = cli_output(res)
    assert res.exit_code == 1, text
    assert "row 1, column AMT: AMT 1e+300 is too large for a fit" in text
    assert "-2 log L" not in text and "Traceback" not in text
    assert not out.exists()


def test_addl_beyond_the_expansion_limit_names_row_and_column(tmp_path):
    """ADDL 1e12 used to exhaust memory (a MemoryError traceback): now a dataset error in every command."""
    path = tmp_path / "d.csv"
    path.write_text("ID,TIME,AMT,EVID,ADDL,II\n1,0,100,1,1e12,1\n1,1,0,0,0,0\n")
    with pytest.raises(DatasetError) as info:
        validate_dataset(path)
    assert _one_error(info.value).startswith(
        "row 1, column ADDL: ADDL 1000000000000 is too large: at most 100,000 additional doses per record"
    )
    path.write_text("ID,TIME,AMT,EVID,ADDL,II\n1,0,100,1,100000,1\n1,1,0,0,0,0\n")
    assert validate_dataset(path)["ADDL"].iloc[0] == 100000
