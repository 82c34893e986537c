"""Matplotlib with a headless backend; every figure in the project is drawn through this module."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "axes.titlesize": 11, "axes.labelsize": 10, "font.size": 9})

__all__ = ["plt", "matplotlib"]
