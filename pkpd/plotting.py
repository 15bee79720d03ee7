"""Small matplotlib helpers shared by every figure the package draws (headless: no pyplot, no display).

Figures are made with the object-oriented API on an Agg canvas, so drawing never opens a window, never
touches pyplot's global state and works in threads, notebooks and batch jobs alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["new_figure", "quantile_band"]


def new_figure(width_in: float, height_in: float, dpi: int = 100) -> Any:
    """A :class:`matplotlib.figure.Figure` of ``width_in`` x ``height_in`` inches on an Agg canvas.

    >>> new_figure(4, 3).get_size_inches().tolist()
    [4.0, 3.0]
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def quantile_band(ax: Any, t: np.ndarray, y: np.ndarray, label: str, color: str) -> None:
    """Draw the 10-90 % band (shaded) and the median (line) of ``y`` (rows: subjects, columns: ``t``) on
    ``ax``, labelled ``"<label> 10-90 %"`` and ``"<label> median"`` for the legend."""
    q10, q50, q90 = np.quantile(y, [0.1, 0.5, 0.9], axis=0)
    ax.fill_between(t, q10, q90, color=color, alpha=0.25, linewidth=0, label=f"{label} 10-90 %")
    ax.plot(t, q50, color=color, linewidth=1.5, label=f"{label} median")
