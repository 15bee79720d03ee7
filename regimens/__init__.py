"""Regimen representation, constraints and optimizer (built on :mod:`pkpd`). Populated by later issues."""
