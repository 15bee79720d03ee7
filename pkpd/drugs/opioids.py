"""Opioid entries (models.md A2-A6, A13)."""

from __future__ import annotations

from ._base import Drug

DRUGS: tuple[Drug, ...] = ()
