"""Label-limit and CPIC checks of a regimen over a population (one :func:`regimens.check_regimen` per patient).

Used by ``pkpd simulate --regimen`` (``findings.csv``); it lives with the regimens because it calls their checker
(``pkpd`` never imports ``regimens``).

Findings are grouped by severity, drug and rule, with the number of patients affected and the message of
the first one as an example. A dose above a label maximum is a warning: simulation is still allowed.
"""

from __future__ import annotations

import pandas as pd

from .limits import check_regimen

__all__ = ["regimen_findings"]

_PHENO_COLS = {"CYP2D6": "CYP2D6_PHENO", "CYP2C9": "CYP2C9_PHENO"}


def regimen_findings(regimen, population: pd.DataFrame) -> pd.DataFrame:
    """Findings of ``check_regimen`` for every patient, grouped.

    Returns
    -------
    pandas.DataFrame
        Columns ``severity, drug, rule, patients, message, unverified, source`` (empty when all is well).
    """
    cov_cols = [c for c in population.columns if c not in ("ID",) and population[c].dtype.kind in "fiub"]
    keys = cov_cols + [c for c in _PHENO_COLS.values() if c in population]
    groups: dict[tuple, dict] = {}
    # patients with identical covariates and phenotypes get identical findings: check each profile once
    for _, grp in population.groupby(keys, dropna=False, sort=False):
        row = grp.iloc[0]
        cov = {c: float(row[c]) for c in cov_cols}
        phen = {g: row[c] for g, c in _PHENO_COLS.items() if c in population}  # "unknown" is skipped there
        for f in check_regimen(regimen, cov, phen or None):
            k = (f.severity, f.drug, f.rule)
            g = groups.setdefault(
                k,
                {
                    "severity": f.severity,
                    "drug": f.drug,
                    "rule": f.rule,
                    "patients": 0,
                    "message": f.message,
                    "unverified": f.unverified,
                    "source": f.source,
                },
            )
            g["patients"] += len(grp)
    cols = ["severity", "drug", "rule", "patients", "message", "unverified", "source"]
    if not groups:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(list(groups.values()), columns=cols)
    return out.sort_values(["severity", "patients"], ascending=[True, False], kind="stable").reset_index(drop=True)
