"""benchmarks/gpu_check.py (issue 23) runs end to end on a CPU with small sizes, so that the accelerator check
cannot rot between GPU loans: one process per precision, figures written per stage, a page at the end.

The default suite runs the W1 stage only (the event engine in float64 and float32, checked against the numpy
closed form); the regimen and optimizer stages run under ``-m slow``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *stages: str) -> str:
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--quick", "--out-dir", str(tmp_path), "--stages", *stages]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_w1_stage_in_both_precisions(tmp_path):
    page = _run(tmp_path, "w1")
    assert (tmp_path / "gpu_check.md").read_text() == page[:-1]  # print() adds the last newline
    recs = {p: json.loads((tmp_path / f"{p}.json").read_text()) for p in ("float64", "float32")}
    assert {p: r["precision"] for p, r in recs.items()} == {"float64": "float64", "float32": "float32"}
    w64, w32 = recs["float64"]["w1"], recs["float32"]["w1"]
    assert w64["all_ok"] and w32["all_ok"] and w64["n"] == 5000
    # float64 against an independent float64 closed form: rounding only (13 digits of the peak)
    assert w64["rel_err_vs_numpy_f64"] < 1e-12
    # float32: single-precision rounding through ~30 event propagations (eps 6e-8; observed ~6e-7)
    assert 1e-9 < w32["rel_err_vs_numpy_f64"] < 1e-5  # > 1e-9: the process really ran in float32
    assert "float32 against float64 on the device, W1" in page


@pytest.mark.slow
def test_all_stages(tmp_path):
    page = _run(tmp_path, "w1", "regimen", "optimize")
    r32 = json.loads((tmp_path / "float32.json").read_text())
    assert r32["regimen"]["patients"] == 32 and r32["optimize"]["safe"] == 2
    assert "not run or not finished" not in page and "Not run" not in page
