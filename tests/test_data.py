"""Tests of pkpd.data: reading, checking and normalizing NONMEM-format datasets."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest

from pkpd.data import STANDARD_COLUMNS, check_dataset, read_dataset, validate_dataset
from pkpd.errors import DatasetError, DatasetViolation, PKPDError

MODEL = dict(
    n_compartments=3,
    compartment_names=("DEPOT", "CENTRAL", "PERIPH"),
    model_name="2cmt_oral",
    parameter_names={"CL", "V1", "Q", "V2", "KA"},
    required_covariates=("WT",),
)


def write(tmp_path, text: str, name: str = "data.csv"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def frame(text: str) -> pd.DataFrame:
    """A raw string frame like read_dataset's, from CSV text."""
    import io

    return pd.read_csv(io.StringIO(textwrap.dedent(text).lstrip("\n")), dtype=str, keep_default_na=False)


def find(violations: list[DatasetViolation], fragment: str) -> DatasetViolation:
    hits = [v for v in violations if fragment in v.message]
    assert len(hits) == 1, f"{fragment!r} matched {len(hits)} of:\n" + "\n".join(map(str, violations))
    return hits[0]


# ------------------------------------------------------------------------------------------ valid data


VALID = """
ID,TIME,EVID,AMT,CMT,RATE,DV,WT,SEX
1,0,1,100,1,0,.,70.5,M
1,0.5,0,.,2,.,1.8,70.5,M
1,2,0,0,2,0,,70.5,M
2,0,1,200,2,50,.,82,F
2,4,0,0,2,0,3.1,82,F
"""


def test_valid_dataset_is_normalized(tmp_path):
    p = write(tmp_path, VALID)
    out = validate_dataset(p, **MODEL)
    # original columns first, in order, then the missing standard columns in STANDARD_COLUMNS order
    assert list(out.columns) == [
        "ID",
        "TIME",
        "EVID",
        "AMT",
        "CMT",
        "RATE",
        "DV",
        "WT",
        "SEX",
        "II",
        "ADDL",
        "SS",
        "MDV",
    ]
    for c in STANDARD_COLUMNS:
        assert out[c].dtype == np.float64, c
    assert out["WT"].dtype == np.float64
    assert out["WT"].tolist() == [70.5, 70.5, 70.5, 82.0, 82.0]
    assert out["SEX"].tolist() == ["M", "M", "M", "F", "F"]
    assert out["ID"].tolist() == [1, 1, 1, 2, 2]
    assert out["TIME"].tolist() == [0, 0.5, 2, 0, 4]
    assert out["AMT"].tolist() == [100, 0, 0, 200, 0]  # '.' -> 0
    assert out["RATE"].tolist() == [0, 0, 0, 50, 0]
    assert out["DV"].tolist()[1] == 1.8 and out["DV"].tolist()[0] == 0.0  # '.' -> 0
    assert np.isnan(out["DV"].iloc[2])  # blank DV -> missing
    assert out["MDV"].tolist() == [1, 0, 0, 1, 0]
    assert (out["II"] == 0).all() and (out["ADDL"] == 0).all() and (out["SS"] == 0).all()
    assert list(out.index) == list(range(5))


def test_minimal_dataset_gets_defaults():
    df = pd.DataFrame(
        {
            "ID": [1, 1, 1, 1],
            "TIME": [0, 1, 2, 3],
            "AMT": [10, 0, 0, 0],
            "MDV": [1, 0, 1, 0],
            "DV": [np.nan, 2.0, np.nan, 1.0],
        }
    )
    out = validate_dataset(df)
    assert out["EVID"].tolist() == [1, 0, 2, 0]  # AMT>0 -> 1, MDV=1 & AMT=0 -> 2
    assert out["CMT"].tolist() == [1, 0, 0, 0]  # doses into compartment 1
    assert out["MDV"].tolist() == [1, 0, 1, 0]
    assert list(out.columns[:5]) == ["ID", "TIME", "AMT", "MDV", "DV"]
    assert all(out[c].dtype == np.float64 for c in STANDARD_COLUMNS)
    # the caller's frame is not modified
    assert list(df.columns) == ["ID", "TIME", "AMT", "MDV", "DV"]


def test_observation_only_dataset_needs_no_amt():
    out = validate_dataset(pd.DataFrame({"ID": [1, 1], "TIME": [0, 1], "DV": [1.0, 2.0]}))
    assert out["EVID"].tolist() == [0, 0] and out["AMT"].tolist() == [0, 0] and out["MDV"].tolist() == [0, 0]


def test_row_order_preserved_and_numeric_frame_roundtrips():
    df = frame(VALID)
    out = validate_dataset(df, **MODEL)
    assert check_dataset(out, **MODEL) == []  # a normalized frame is still valid
    assert out["TIME"].tolist() == [0, 0.5, 2, 0, 4]


# --------------------------------------------------------------------------------------- malformed data


MALFORMED = """
ID,TIME,EVID,AMT,CMT,RATE,II,ADDL,SS,DV,WT
1,0,1,100,1,0,0,0,0,.,70
1,1,0,0,2,0,0,0,0,5.2,70
1,2,1,-50,1,0,0,0,0,.,70
1,1.5,0,0,2,0,0,0,0,4.1,70
1,3,1,100,1,0,0,0,1,.,70
2,0,1,100,5,0,0,0,0,.,80
2,1,1,100,2,-2,0,0,0,.,80
2,2,0,0,2,0,0,0,0,abc,80
2,3,1,100,1,0,0,3,0,.,80
2,4,7,0,2,0,0,0,0,3.3,80
3,0,1,100,1,0,12,0,3,.,60
3,1,1,"1,5",1,0,0,0,0,.,60
3,2,0,0,2,0,0,0,0,2.0,
1,10,0,0,2,0,0,0,0,2.0,70
4,x,0,0,2,0,0,0,0,1.0,75
4,-1,0,0,2,0,0,0,0,1.0,75
"""

# fragment of the message -> expected 1-based data rows
EXPECTED = {
    "negative AMT": (3,),
    "TIME decreases within an ID": (4,),
    "SS=1 or 2 needs II > 0": (5,),
    "CMT 5 does not exist in model 2cmt_oral, which has 1=DEPOT, 2=CENTRAL, 3=PERIPH": (6,),
    "RATE=-2 (modeled duration) needs parameter D2 in the parameter file": (7,),
    "non-numeric values 'abc'": (8,),
    "ADDL > 0 needs II > 0": (9,),
    "EVID must be 0": (10,),
    "SS=3 is not supported": (11,),
    "non-numeric values '1,5'": (12,),
    "covariate WT must be numeric": (13,),
    "ID 1 appears in 2 separate blocks": (14,),
    "TIME must be a number": (15,),
    "negative TIME": (16,),
}


def test_malformed_dataset_reports_every_problem(tmp_path):
    p = write(tmp_path, MALFORMED)
    with pytest.raises(DatasetError) as info:
        validate_dataset(p, **MODEL)
    err = info.value
    assert isinstance(err, PKPDError)
    assert err.source == str(p)
    v = err.violations
    for fragment, rows in EXPECTED.items():
        assert find(v, fragment).rows == rows, fragment
    assert len(v) == len(EXPECTED), "\n".join(map(str, v))
    assert find(v, "EVID must be 0").message.endswith("found 7")
    assert find(v, "non-numeric values 'abc'").column == "DV"
    assert find(v, "non-numeric values '1,5'").column == "AMT"
    assert find(v, "ID 1 appears").column == "ID"
    # sorted by first row
    firsts = [x.rows[0] for x in v]
    assert firsts == sorted(firsts)
    # the error text lists them all
    text = str(err)
    assert text.startswith(f"Dataset {p} is invalid: {len(EXPECTED)} problems found")
    for fragment, rows in EXPECTED.items():
        assert f"row {rows[0]}" in text and fragment in text
    # check_dataset on the raw frame gives the same list
    assert check_dataset(read_dataset(p), **MODEL) == v


def test_missing_required_column_in_second_frame():
    df = pd.DataFrame({"ID": [1, 1], "EVID": [1, 0], "AMT": ["5", "."], "DV": [".", "3"]})
    v = check_dataset(df)
    (missing,) = v
    assert missing.column == "TIME" and missing.rows == ()
    assert "required column TIME is missing" in missing.message
    with pytest.raises(DatasetError, match="required column TIME is missing") as info:
        validate_dataset(df)
    assert info.value.source is None
    # AMT is required once a row is a dose
    v = check_dataset(pd.DataFrame({"ID": [1, 1, 1], "TIME": [0, 1, 2], "EVID": [1, 0, 1]}))
    assert find(v, "column AMT is missing").rows == (1, 3)


def test_missing_covariate_column():
    df = pd.DataFrame({"ID": [1], "TIME": [0], "AMT": [5], "wt": [70]})
    v = check_dataset(df, required_covariates=("WT", "AGE"))
    assert find(v, "references column WT, which the dataset does not have").column == "WT"
    assert "found 'wt'" in find(v, "column WT").message
    assert find(v, "parameter file references column AGE, which the dataset does not have").rows == ()


# --------------------------------------------------------------------------------------- single rules


def rows_of(text: str, fragment: str, **kw) -> tuple[int, ...]:
    return find(check_dataset(frame(text), **kw), fragment).rows


def test_time_may_go_back_on_reset_rows():
    text = """
    ID,TIME,EVID,AMT,DV
    1,0,1,100,.
    1,5,0,0,2
    1,0,3,0,.
    1,1,0,0,3
    1,0.5,4,100,.
    1,2,0,0,4
    """
    assert validate_dataset(frame(text))["TIME"].tolist() == [0, 5, 0, 1, 0.5, 2]
    bad = text.replace("1,0,3,0,.", "1,0,2,0,.")
    assert rows_of(bad, "TIME decreases within an ID") == (3,)


def test_rows_of_one_kind_are_grouped():
    text = """
    ID,TIME,AMT,EVID
    1,0,-1,1
    1,1,5,9
    1,2,-3,1
    1,3,5,8
    """
    v = check_dataset(frame(text))
    assert find(v, "negative AMT").rows == (1, 3)
    evid = find(v, "EVID must be")
    assert evid.rows == (2, 4) and "found 9, 8" in evid.message


def test_non_numeric_values_shows_at_most_five():
    cells = ["a", "b", "c", "d", "e", "f", "g"]
    df = pd.DataFrame({"ID": [1] * 7, "TIME": range(7), "AMT": cells})
    viol = find(check_dataset(df), "non-numeric")
    assert viol.rows == tuple(range(1, 8))
    assert "'a', 'b', 'c', 'd', 'e' (+2 more)" in viol.message


def test_blank_or_dot_id_and_time_are_violations():
    text = """
    ID,TIME,AMT
    1,0,10
    .,1,0
    1,,0
    A01,2,0
    """
    v = check_dataset(frame(text))
    assert find(v, "ID must be a number").rows == (2, 4)
    assert "'.', 'A01'" in find(v, "ID must be a number").message
    assert find(v, "TIME must be a number").rows == (3,)
    assert "blank" in find(v, "TIME must be a number").message


HEAD = "ID,TIME,EVID,AMT,CMT,RATE,II,ADDL,SS\n"


@pytest.mark.parametrize(
    "row, fragment",
    [
        ("1,1,1,100,0,0,0,0,0", "dose rows need a compartment number (CMT 1..3)"),
        ("1,1,1,100,-2,0,0,0,0", "compartment turn-off) is not supported"),
        ("1,1,1,100,1.5,0,0,0,0", "CMT must be a whole compartment number"),
        ("1,1,1,100,2,-3,0,0,0", "RATE must be >= 0"),
        ("1,1,1,100,2,-1,0,0,0", "RATE=-1 (modeled rate) needs parameter R2 in the parameter file"),
        ("1,1,1,100,1,10,0,0,0", "infusions into compartment 1 are not supported by this model"),
        ("1,1,1,100,2,0,-12,0,0", "negative II"),
        ("1,1,1,100,2,0,12,-1,0", "ADDL must be a whole number >= 0"),
        ("1,1,1,100,2,0,12,1.5,0", "ADDL must be a whole number >= 0"),
        ("1,1,1,100,2,0,12,0,5", "SS must be 0, 1 or 2"),
        ("1,1,0,0,2,0,12,0,1", "SS is set on a non-dose row"),
        ("1,1,1,100,2,0,0,0,2", "SS=1 or 2 needs II > 0"),
        ("1,1,1,0,2,5,0,0,2", "SS=2 with a constant infusion (AMT=0, RATE>0, II=0) is not allowed"),
        ("1,1,1,0,2,5,12,0,1", "steady-state constant infusion (SS=1, AMT=0, RATE>0) needs II=0"),
        ("1,1,1,0,2,5,0,0,0", "infusion of nothing"),
        ("1,1,1,0,2,0,0,0,0", "dose of 0"),
        ("1,1,4,0,2,0,0,0,0", "dose of 0"),
    ],
)
def test_single_rules(row, fragment):
    text = HEAD + "1,0,0,0,2,0,0,0,0\n" + row + "\n"
    v = check_dataset(frame(text), n_compartments=3, rate_compartments_forbidden=(1,))
    assert find(v, fragment).rows == (2,)
    assert len(v) == 1, "\n".join(map(str, v))


@pytest.mark.parametrize(
    "row",
    [
        "1,1,1,0,2,5,0,0,1",  # steady-state constant infusion
        "1,1,1,100,2,0,12,3,1",  # ADDL with SS=1
        "1,1,1,100,2,0,12,3,0",  # ADDL with II
        "1,1,1,100,2,20,0,0,0",  # plain infusion
        "1,1,1,100,2,-2,0,0,0",  # modeled duration with D2
        "1,1,4,100,2,0,24,0,2",  # reset-and-dose, SS=2
        "1,1,1,100,2,.,.,.,.",  # '.' means 0
    ],
)
def test_valid_rows(row):
    text = HEAD + "1,0,0,0,2,0,0,0,0\n" + row + "\n"
    assert check_dataset(frame(text), n_compartments=3, parameter_names={"D2"}) == []


def test_cmt_message_without_names():
    text = HEAD + "1,0,1,10,4,0,0,0,0\n1,1,1,10,4,0,0,0,0\n1,2,1,10,7,0,0,0,0\n"
    v = check_dataset(frame(text), n_compartments=2)
    assert find(v, "CMT 4 does not exist").rows == (1, 2)
    assert "compartments 1..2" in find(v, "CMT 4").message
    assert find(v, "CMT 7 does not exist").rows == (3,)


def test_cmt_absent_doses_go_to_compartment_1():
    df = pd.DataFrame({"ID": [1], "TIME": [0], "AMT": [10], "RATE": [-2]})
    assert "needs parameter D1" in check_dataset(df)[0].message
    assert validate_dataset(df, parameter_names=("D1",))["CMT"].tolist() == [1.0]


# --------------------------------------------------------------------------------------------- reading


def test_read_dataset_lowercase_headers_and_dots(tmp_path):
    p = write(
        tmp_path,
        """
    id , time,amt,EVID,cmt,DV,wt
    1,0,100,1,1,.,70
    1,1,.,0,2,5.5,70
    1,2,,0,.,,70
    """,
    )
    raw = read_dataset(p)
    assert list(raw.columns) == ["ID", "TIME", "AMT", "EVID", "CMT", "DV", "wt"]
    assert raw["AMT"].tolist() == ["100", ".", ""]  # raw strings, nothing coerced
    out = validate_dataset(p)
    assert out["AMT"].tolist() == [100, 0, 0]
    assert out["CMT"].tolist() == [1, 2, 0]
    assert out["DV"].tolist()[:2] == [0.0, 5.5] and np.isnan(out["DV"].iloc[2])
    assert out["wt"].dtype == np.float64
    # case-insensitive matching also applies to frames passed directly
    assert "TIME" in validate_dataset(pd.DataFrame({"id": [1], "Time": [0]})).columns


def test_read_dataset_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="file not found") as info:
        read_dataset(tmp_path / "nope.csv")
    assert info.value.source == str(tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match="file not found"):
        validate_dataset(str(tmp_path / "nope.csv"))


def test_read_dataset_empty_and_ragged(tmp_path):
    with pytest.raises(DatasetError, match="empty"):
        read_dataset(write(tmp_path, "", "empty.csv"))
    with pytest.raises(DatasetError, match="well-formed") as info:
        read_dataset(write(tmp_path, "ID,TIME\n1,0\n1,1,5\n", "ragged.csv"))
    assert info.value.violations[0].rows == (2,)
    with pytest.raises(DatasetError, match="no data rows"):
        validate_dataset(write(tmp_path, "ID,TIME\n", "header.csv"))


def test_duplicate_columns_reported(tmp_path):
    p = write(tmp_path, "ID,TIME,time\n1,0,0\n")
    v = check_dataset(read_dataset(p))
    assert find(v, "column TIME appears 2 times").column == "TIME"
