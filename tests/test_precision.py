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


REGIMEN_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, jax, jax.numpy as jnp
    from pkpd.patients import spine72_population
    from pkpd.regimen_sim import SimOptions, relaxed_objective
    from regimens import get_regimen
    pop = spine72_population(8, 4)
    f, ns, nr = relaxed_objective(get_regimen("IYER_APAP"), pop, seed=4, options=SimOptions())
    out = f(jnp.ones(ns), jnp.ones(nr))
    np.save(sys.argv[1], np.stack([np.asarray(out[k], np.float64) for k in ("MME_0_72", "PAIN_AUC", "TIT3")]
                                  + [np.full(len(pop), 64.0 if jax.config.jax_enable_x64 else 32.0)]))
    """
)


def test_regimen_simulator_float32_matches_float64(tmp_path):
    """Population regimen simulator (relaxed, deterministic) in float32 vs float64: expected 72-h MME, pain AUC
    and time in target per patient agree to 1e-4 relative (890 steps of a scan with demand feedback; observed
    4e-6; the margin covers the feedback's amplification of roundoff). Random draws are float32 in both
    precisions, so the two runs see the same patients."""
    res = {}
    for prec in ("float64", "float32"):
        env = dict(os.environ, PKPD_PRECISION=prec, PYTHONPATH=str(ROOT))
        target = tmp_path / f"reg_{prec}.npy"
        subprocess.run([sys.executable, "-c", REGIMEN_SCRIPT, str(target)], check=True, env=env, cwd=ROOT)
        res[prec] = np.load(target)
    a, b = res["float64"], res["float32"]
    assert a[-1, 0] == 64 and b[-1, 0] == 32
    np.testing.assert_allclose(b[:3], a[:3], rtol=1e-4)
