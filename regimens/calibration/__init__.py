"""Calibration and validation of the outcome model on the evidence base (see :mod:`regimens.evidence`).

Pipeline (``python -m regimens.calibration``; docs/outcome_model.md):

1. :mod:`.arms`: each evidence arm's virtual population and reported numbers (targets) in its own units;
2. :mod:`.design`: design points of the outcome-model parameters (and per-trial effects), every arm
   simulated at every point in one batched call;
3. :mod:`.emulator`: a Gaussian-process emulator of each target statistic, checked on held-out points;
4. :mod:`.fit`: the aggregate-data likelihood (each arm's N and spread) in NumPyro, NUTS, the posterior
   written to ``pkpd/datasets/outcome_posterior.json``, the combination rules compared;
5. :mod:`.validate`: leave-one-trial-out predictions of every arm and between-arm effect, and checks of the
   stated targets with the exact simulator.
"""
