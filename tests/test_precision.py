"""float32 path (the accelerator default) checked against float64 on the same inputs.

The engine runs in a subprocess with PKPD_PRECISION=float32 (64-bit mode off). Tolerance 1e-5 relative to
the peak concentration: float32 carries ~7 significant digits, and an event timeline of ~300 points
accumulates a few units of roundoff per step (observed 4e-7).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, pandas as pd, jax
    import pkpd
    rows = [dict(ID=1, TIME=0, EVID=1, AMT=100, CMT=1, II=12, ADDL=6, RATE=0)]
    rows += [dict(ID=1, TIME=float(t), EVID=0, AMT=0, CMT=2, II=0, ADDL=0, RATE=0) for t in np.arange(0, 96, 0.5)]
    rows.append(dict(ID=2, TIME=0, EVID=1, AMT=50, CMT=2, II=8, ADDL=3, RATE=25))
    rows += [dict(ID=2, TIME=float(t), EVID=0, AMT=0, CMT=2, II=0, ADDL=0, RATE=0) for t in np.arange(0, 48, 0.5)]
    df = pd.DataFrame(rows)
    p = {"CL": 5, "V1": 50, "Q": 10, "V2": 100, "KA": 1}
    out = pkpd.simulate(df, "2cmt_oral", p, solver=sys.argv[1])
    np.save(sys.argv[2], np.stack([out["CP"].to_numpy(np.float64),
                                   np.full(len(out), 64.0 if jax.config.jax_enable_x64 else 32.0)]))
    """
)


def _run(tmp_path, precision, solver):
    env = dict(os.environ, PKPD_PRECISION=precision, PYTHONPATH=str(ROOT))
    target = tmp_path / f"{precision}_{solver}.npy"
    subprocess.run([sys.executable, "-c", SCRIPT, solver, str(target)], check=True, env=env, cwd=ROOT)
    arr = np.load(target)
    return arr[0], arr[1, 0]


@pytest.mark.parametrize("solver", ["analytic", "ode"])
def test_float32_matches_float64(tmp_path, solver):
    c64, bits64 = _run(tmp_path, "float64", solver)
    c32, bits32 = _run(tmp_path, "float32", solver)
    assert bits64 == 64 and bits32 == 32
    assert np.max(np.abs(c32 - c64)) / np.max(c64) < 1e-5
