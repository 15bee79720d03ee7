"""Local-anesthetic entries (models.md A11)."""

from __future__ import annotations

from ._base import Drug

DRUGS: tuple[Drug, ...] = ()
