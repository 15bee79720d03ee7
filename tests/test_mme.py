"""Tests of pkpd.mme. Expected factors are typed in from ``shared/reference/models.md`` section C
("MME conversion factors, CDC 2022"), each with the table row it checks; they are not copied from the module.
"""

from __future__ import annotations

import numpy as np
import pytest

from pkpd.errors import ModelSpecError
from pkpd.mme import MME_FACTORS, MMEFactor, daily_mme, mme, mme_table, total_mme

# (drug, route, dose, expected MME, models.md row)
CDC_ROWS = [
    ("codeine", "oral", 100.0, 15.0, "| Codeine | 0.15 | mg/day |"),
    ("fentanyl", "transdermal", 25.0, 60.0, "| Fentanyl transdermal | 2.4 | per µg/h |"),
    ("hydrocodone", "oral", 10.0, 10.0, "| Hydrocodone | 1.0 | – |"),
    ("hydromorphone", "oral", 2.0, 10.0, "| Hydromorphone | 5.0 | oral |"),
    ("methadone", "oral", 10.0, 47.0, "| Methadone | 4.7 | – |"),
    ("morphine", "oral", 30.0, 30.0, "| Morphine | 1.0 | oral |"),
    ("oxycodone", "oral", 10.0, 15.0, "| Oxycodone | 1.5 | oral |"),
    ("oxymorphone", "oral", 10.0, 30.0, "| Oxymorphone | 3.0 | – |"),
    ("tapentadol", "oral", 100.0, 40.0, "| Tapentadol | 0.4 | footnoted in the CDC table ... |"),
    ("tramadol", "oral", 50.0, 10.0, "| Tramadol | 0.2 | footnoted in the CDC table ... |"),
]


@pytest.mark.parametrize("drug,route,dose,expected,row", CDC_ROWS, ids=[r[0] for r in CDC_ROWS])
def test_cdc_factor(drug, route, dose, expected, row):
    assert mme(drug, dose, route) == pytest.approx(expected, rel=1e-12), row
    entry = MME_FACTORS[(drug, route)]
    assert isinstance(entry, MMEFactor) and not entry.unverified
    assert "CDC 2022" in entry.source and "globalrph.com" in entry.source and "medscape.org" in entry.source


def test_table_has_exactly_the_cdc_rows_plus_unsourced_iv():
    sourced = {k for k, f in MME_FACTORS.items() if f.factor is not None}
    assert sourced == {(d, r) for d, r, *_ in CDC_ROWS}
    # "The table lists no IV/parenteral factors ... (**UNVERIFIED**)" and E: "- IV MME factors." (a gap)
    iv = {k: f for k, f in MME_FACTORS.items() if k[1] == "iv"}
    assert set(iv) == {("morphine", "iv"), ("hydromorphone", "iv"), ("fentanyl", "iv")}
    assert all(f.factor is None and f.unverified for f in iv.values())


def test_fentanyl_units():
    assert MME_FACTORS[("fentanyl", "transdermal")].unit == "per mcg/h"
    assert MME_FACTORS[("oxycodone", "oral")].unit == "per mg"


def test_case_aliases_and_route_spellings():
    assert mme("  OxyCodone ", 10, "PO") == pytest.approx(15.0)
    assert mme("oxycontin", 10) == pytest.approx(15.0)
    assert mme("Dilaudid", 2, "oral") == pytest.approx(10.0)
    assert mme("fentanyl", 12, "patch") == pytest.approx(28.8)


def test_unknown_drug_lists_known():
    with pytest.raises(ModelSpecError, match="known drugs:.*oxycodone"):
        mme("heroin", 10)


@pytest.mark.parametrize("drug,route", [("oxycodone", "rectal"), ("fentanyl", "oral"), ("tramadol", "iv")])
def test_unknown_or_unavailable_route(drug, route):
    with pytest.raises(ModelSpecError):
        mme(drug, 1.0, route)


@pytest.mark.parametrize("bad", [-1.0, np.array([1.0, -0.5]), "10"])
def test_bad_dose(bad):
    with pytest.raises(ModelSpecError):
        mme("morphine", bad)


@pytest.mark.parametrize("drug", ["morphine", "hydromorphone", "fentanyl"])
def test_iv_has_no_sourced_factor(drug):
    with pytest.raises(ModelSpecError, match="No sourced MME factor"):
        mme(drug, 1.0, "iv")
    with pytest.raises(ModelSpecError, match="No sourced MME factor"):
        mme(drug, 1.0, "iv", allow_unverified=True)
    with pytest.raises(ModelSpecError, match="allow_unverified"):
        mme(drug, 1.0, "iv", factor=3.0)
    # an explicitly caller-sourced factor is applied as given
    assert mme(drug, 4.0, "IV", factor=3.0, allow_unverified=True) == pytest.approx(12.0)


def test_bad_override_factor():
    with pytest.raises(ModelSpecError):
        mme("morphine", 1.0, "iv", factor=-1.0, allow_unverified=True)


def test_mixed_day_by_hand():
    # oxycodone 5 mg x4 = 20 mg x 1.5 = 30 MME; tramadol 50 mg x3 = 150 mg x 0.2 = 30 MME -> 60 MME
    doses = [("oxycodone", 5, "oral")] * 4 + [("tramadol", 50, "po")] * 3
    assert daily_mme(doses) == pytest.approx(60.0)
    assert daily_mme([]) == 0.0
    with pytest.raises(ModelSpecError):
        daily_mme([("morphine",)])


def test_total_mme_window():
    doses = [(0, "oxycodone", 5), (6, "oxycodone", 5), (12, "morphine", 10, "oral"), (24, "tramadol", 50)]
    assert total_mme(doses) == pytest.approx(7.5 + 7.5 + 10 + 10)
    assert total_mme(doses, 0, 24) == pytest.approx(25.0)  # [0, 24): excludes the 24 h dose
    assert total_mme(doses, 6, 13) == pytest.approx(17.5)
    with pytest.raises(ModelSpecError):
        total_mme(doses, 10, 5)


def test_vectorized_numpy_and_list():
    d = np.array([0.0, 5.0, 10.0, 20.0])
    np.testing.assert_allclose(mme("oxycodone", d), [0.0, 7.5, 15.0, 30.0])
    np.testing.assert_allclose(mme("tramadol", [50, 100]), [10.0, 20.0])
    np.testing.assert_allclose(daily_mme([("oxycodone", d), ("morphine", d)]), d * 2.5)


def test_jax_arrays_and_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    out = mme("hydromorphone", jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(np.asarray(out), [5.0, 10.0])
    f = jax.jit(lambda x: mme("oxycodone", x))
    assert float(f(jnp.float32(10.0))) == pytest.approx(15.0)
    assert float(jax.grad(lambda x: mme("methadone", x))(1.0)) == pytest.approx(4.7)


def test_mme_table():
    df = mme_table()
    assert list(df.columns) == ["drug", "route", "factor", "unit", "source", "unverified", "note"]
    assert len(df) == len(MME_FACTORS)
    row = df[(df.drug == "oxycodone") & (df.route == "oral")].iloc[0]
    assert row.factor == 1.5 and not row.unverified


def test_no_jax_import_at_module_level():
    import ast
    import pathlib

    import pkpd.mme as m

    tree = ast.parse(pathlib.Path(m.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [getattr(n, "module", "") or "" for n in top]
    assert not any(x.split(".")[0] == "jax" for x in names)
