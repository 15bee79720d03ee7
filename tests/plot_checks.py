"""Shared checker of issue 25 for the PNG plots: every visible axis has an x and a y label ending in a
unit in parentheses, and every drawn line, band, point set and bar set has a legend entry.

Used by tests/test_fit_plots.py and tests/test_plot_labels.py."""

from __future__ import annotations

import re

import numpy as np

UNIT = re.compile(r"\(([^()]+)\)\s*$")  # a unit in parentheses at the end of the label


def _has_data(artist) -> bool:
    from matplotlib.collections import Collection
    from matplotlib.lines import Line2D

    if isinstance(artist, Line2D):
        x = np.asarray(artist.get_xdata(), float)
        return x.size > 0 and np.isfinite(x).any()
    if isinstance(artist, Collection):
        return len(artist.get_paths()) > 0 or len(artist.get_offsets()) > 0
    return False


def check_figure(fig, units_expected: dict[str, str] | None = None) -> list[str]:
    """Problems of a figure: a visible axis without x or y label (figure-level supxlabel/supylabel count),
    a label without a unit in parentheses, a line/collection/bar container with data whose label is not
    in a legend of the figure. ``units_expected``: label substring -> unit that such labels must carry.
    Returns the label texts seen."""
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes, "no visible axes"
    legend_texts = set()
    for ax in axes:
        if ax.get_legend() is not None:
            legend_texts |= {t.get_text() for t in ax.get_legend().get_texts()}
    for lg in fig.legends:
        legend_texts |= {t.get_text() for t in lg.get_texts()}
    sup_x = fig._supxlabel.get_text() if getattr(fig, "_supxlabel", None) is not None else ""
    sup_y = fig._supylabel.get_text() if getattr(fig, "_supylabel", None) is not None else ""
    labels = []
    for ax in axes:
        xl, yl = ax.get_xlabel() or sup_x, ax.get_ylabel() or sup_y
        assert xl and yl, f"axis without label: x={xl!r} y={yl!r} (title {ax.get_title()!r})"
        for lab in (xl, yl):
            assert UNIT.search(lab), f"no unit in parentheses: {lab!r}"
            labels.append(lab)
            for key, unit in (units_expected or {}).items():
                if key in lab:
                    assert UNIT.search(lab).group(1) == unit, (lab, unit)
        artists = list(ax.lines) + list(ax.collections)
        for a in artists:
            if _has_data(a):
                lab = a.get_label()
                assert lab and not lab.startswith("_") and lab in legend_texts, (
                    f"artist without legend entry: {type(a).__name__} {lab!r} in {ax.get_title()!r}"
                )
        for cont in ax.containers:  # bars: the container or (ax.hist) its first patch carries the label
            lab = cont.get_label() if not cont.get_label().startswith("_") or not len(cont) else cont[0].get_label()
            assert lab and not lab.startswith("_") and lab in legend_texts, f"bars without legend entry: {lab!r}"
    return labels
