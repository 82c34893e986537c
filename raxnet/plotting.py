"""Matplotlib with a headless backend; every figure in the project is drawn through this module."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "axes.titlesize": 11, "axes.labelsize": 10, "font.size": 9})

__all__ = ["plt", "matplotlib", "plot_training_curves"]


def plot_training_curves(history: "pandas.DataFrame", title: str = "") -> "matplotlib.figure.Figure":
    """Loss, Dice and learning rate per epoch from a stage-07 ``history.csv`` (train and inner validation).

    The epoch with the lowest inner-validation loss (the checkpoint stage 07 keeps) is marked. Returns the
    figure; save it with :func:`raxnet.io.save_figure`.
    """
    import numpy as np

    epoch = history["epoch"].to_numpy()
    panels = [("loss", "loss"), ("dice", "Dice")] + ([("lr", "learning rate")] if "lr" in history else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3), squeeze=False)
    best = None
    if "val_loss" in history and history["val_loss"].notna().any():
        best = int(epoch[int(np.nanargmin(history["val_loss"].to_numpy(dtype=float)))])
    for ax, (key, label) in zip(axes[0], panels):
        if key in history:
            ax.plot(epoch, history[key], marker="o", ms=3, label="train" if key != "lr" else None)
        if f"val_{key}" in history:
            ax.plot(epoch, history[f"val_{key}"], marker="o", ms=3, label="inner validation")
        if best is not None:
            ax.axvline(best, color="0.5", ls="--", lw=1, label=f"best epoch {best}")
        if key == "lr":
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label.capitalize() if key != "dice" else "Dice (batch mean)")
        ax.grid(alpha=0.3)
        if key != "lr":
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
