"""The evidence base (regimens/evidence): every entry is well formed, quoted and sourced, every calibration
arm's regimen loads and simulates, and a malformed file is a clear error listing every problem."""

from __future__ import annotations

import shutil

import pytest

from regimens.calibration.arms import arm_targets, calibration_arms
from regimens.evidence import EVIDENCE_DIR, EvidenceError, arm_regimen, load_evidence


def test_every_trial_is_quoted_sourced_and_used_or_explained():
    ev = load_evidence()
    assert len(ev.trials) >= 20
    for t in ev.trials:
        assert t.citation and t.design and t.surgery and t.urls, t.id
        if t.use != "calibration":
            assert t.use_note, t.id
        for a in t.arms:
            for o in a.outcomes:
                assert o.quote.strip() and o.url.startswith("http"), (t.id, a.id)
    cal = ev.used("calibration")
    assert len(cal) >= 8 and all(t.is_rct for t in cal)
    for t in cal:
        assert t.simulation["assumptions"], t.id  # every assumption made to simulate it is written down
        assert t.contrasts, t.id
        for a in t.arms:
            reg = arm_regimen(a)
            assert reg.drugs(), (t.id, a.id)
            assert a.n and a.n > 1


def test_targets_are_numbers_from_the_quotes():
    """Every calibration target's observed value appears in the quote it was read from (as printed)."""
    ev = load_evidence()
    n = 0
    for arm in calibration_arms(ev):
        for tg in arm_targets(arm):
            o = tg.outcome
            for v in o.values:
                text = o.quote.replace(",", "")
                printed = f"{v:g}"
                assert printed in text or f"{v:.1f}" in text or f"{v:.3f}" in text, (tg.key, v, o.quote)
            n += 1
    assert n >= 30


def test_stated_targets_exist_with_sources():
    tg = load_evidence().findings["targets"]
    for key in ("tolerant_ratio", "c1_opioid_free", "c1_mme72", "c1_pod1_pain", "spread"):
        assert tg[key]["sources"] and tg[key]["statement"], key


def test_malformed_evidence_lists_every_problem(tmp_path):
    root = tmp_path / "ev"
    shutil.copytree(EVIDENCE_DIR, root)
    p = root / "trials" / "turan2004.toml"
    text = (
        p.read_text()
        .replace('use = "calibration"', 'use = "maybe"')
        .replace('statistic = "mean_sd"', 'statistic = "average"', 1)
    )
    p.write_text(text)
    (root / "trials" / "kim2013.toml").write_text(
        (root / "trials" / "kim2013.toml")
        .read_text()
        .replace('regimen = "kim2013_control"', 'regimen = "no_such_regimen"')
    )
    load_evidence.cache_clear()
    try:
        with pytest.raises(EvidenceError) as exc:
            load_evidence(str(root))
    finally:
        load_evidence.cache_clear()
    msg = str(exc.value)
    assert "turan2004.toml: use must be one of" in msg
    assert "statistic 'average' is not one of" in msg
    assert "kim2013 arm control: regimen 'no_such_regimen'" in msg
