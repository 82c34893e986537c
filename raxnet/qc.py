"""Quality-control overlays: a T1 with lesion contours in three orthogonal views (stage 08, ``raxnet predict``).

Each view cuts through one point: the ground-truth voxel nearest its centroid if it has any lesion,
else the prediction voxel nearest its centroid, else the volume centre. Views are drawn in world orientation for the RAS+
ATLAS grid, neurological convention (axial: left → right across, posterior → anterior up; coronal:
left → right across, inferior → superior up; sagittal: posterior → anterior across, inferior → superior
up), with the voxel spacing as aspect ratio. Ground truth is a green contour, prediction a red one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from raxnet.io import save_figure, voxel_spacing

TRUTH_COLOUR = "#2ca02c"
PRED_COLOUR = "#d62728"

def focus_point(truth: np.ndarray | None, prediction: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """Voxel the three views cut through: the truth voxel nearest the truth's centroid, else the same for
    the prediction, else the volume centre. (A centroid alone can fall outside a non-convex or
    multi-lesion mask, leaving the views without contour.)"""
    for mask in (truth, prediction):
        if mask is not None and np.any(mask):
            idx = np.argwhere(np.asarray(mask) != 0)
            centroid = idx.mean(axis=0)
            nearest = idx[np.argmin(((idx - centroid) ** 2).sum(axis=1))]
            return tuple(int(v) for v in nearest)  # type: ignore[return-value]
    return tuple(int(s) // 2 for s in shape[:3])  # type: ignore[return-value]


def _display_range(t1: np.ndarray) -> tuple[float, float]:
    fg = t1[t1 > 0]
    if fg.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(fg, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def qc_overlay(
    t1: np.ndarray,
    pred_mask: np.ndarray,
    path: str | Path,
    truth: np.ndarray | None = None,
    title: str = "",
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    point: Sequence[int] | None = None,
    heat: np.ndarray | None = None,
    heat_label: str = "",
    heat_max: float | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write a PNG with axial, coronal and sagittal views of ``t1`` and lesion contours.

    ``truth`` is optional (inference has none). ``point`` overrides the cut point (see
    :func:`focus_point`). ``heat`` (same shape, e.g. :func:`raxnet.uncertainty.plane_spread`) is drawn as a
    translucent colour map from 0 to ``heat_max`` (default: its maximum) with a colour bar labelled
    ``heat_label``; values near 0 stay transparent. With ``affine`` (a scan in its own space, e.g. LPS) the
    volumes are first flipped/permuted to the closest RAS+ orientation and ``spacing`` is taken from it,
    so the views and their labels hold for any grid. Returns ``path``.
    """
    from matplotlib.lines import Line2D

    from raxnet.plotting import plt

    if affine is not None:
        import nibabel as nib

        ornt = nib.orientations.io_orientation(affine)
        t1, pred_mask = (nib.orientations.apply_orientation(np.asarray(a), ornt) for a in (t1, pred_mask))
        truth, heat = (None if a is None else nib.orientations.apply_orientation(np.asarray(a), ornt)
                       for a in (truth, heat))
        zooms = voxel_spacing(affine)
        spacing = tuple(float(zooms[int(i)]) for i in np.argsort(ornt[:, 0]))
    t1 = np.asarray(t1, dtype=np.float32)
    pred = np.asarray(pred_mask) != 0
    if pred.shape != t1.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from T1 shape {t1.shape}")
    gt = None
    if truth is not None:
        gt = np.asarray(truth) != 0
        if gt.shape != t1.shape:
            raise ValueError(f"truth shape {gt.shape} differs from T1 shape {t1.shape}")
    if heat is not None:
        heat = np.asarray(heat, dtype=np.float32)
        if heat.shape != t1.shape:
            raise ValueError(f"heat map shape {heat.shape} differs from T1 shape {t1.shape}")
        top = float(heat_max) if heat_max else max(float(heat.max()), 1e-6)
    if point is None:
        point = focus_point(gt, pred, t1.shape)
    x, y, z = (int(np.clip(v, 0, s - 1)) for v, s in zip(point, t1.shape))
    sx, sy, sz = (float(s) for s in spacing[:3])
    # display window from the three shown slices only (percentiles of a whole 1 mm volume cost ~0.5 s)
    vmin, vmax = _display_range(np.concatenate([t1[:, :, z].ravel(), t1[:, y, :].ravel(), t1[x].ravel()]))

    # (title, 2D cut as [horizontal, vertical], aspect = vertical mm / horizontal mm, axis labels)
    views = [
        (f"axial z={z}", (lambda a: a[:, :, z]), sy / sx, ("x (voxel), left → right", "y (voxel), posterior → anterior")),
        (f"coronal y={y}", (lambda a: a[:, y, :]), sz / sx, ("x (voxel), left → right", "z (voxel), inferior → superior")),
        (f"sagittal x={x}", (lambda a: a[x, :, :]), sz / sy, ("y (voxel), posterior → anterior", "z (voxel), inferior → superior")),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 5.0))
    for ax, (name, cut, aspect, (xlabel, ylabel)) in zip(axes, views):
        # imshow draws rows downwards; transpose + origin="lower" puts axis 0 across and axis 1 up.
        ax.imshow(cut(t1).T, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, aspect=aspect,
                  interpolation="nearest")
        if heat is not None:
            h = np.ma.masked_less(cut(heat).T, 0.02 * top)  # transparent where the planes agree
            shown = ax.imshow(h, cmap="inferno", origin="lower", vmin=0.0, vmax=top, alpha=0.75, aspect=aspect,
                              interpolation="nearest")
        for mask, colour in ((gt, TRUTH_COLOUR), (pred, PRED_COLOUR)):
            if mask is None:
                continue
            m = cut(mask)
            if m.any():  # contour() warns on an all-zero slice
                ax.contour(m.T.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2, origin="lower")
        ax.locator_params(nbins=4)  # few ticks: tick layout dominates the drawing time
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    handles = [Line2D([], [], color=PRED_COLOUR, lw=2, label=f"prediction ({int(pred.sum())} voxels)")]
    if gt is not None:
        handles.insert(0, Line2D([], [], color=TRUTH_COLOUR, lw=2, label=f"ground truth ({int(gt.sum())} voxels)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, 0.0))

    fig.suptitle(title or "lesion segmentation QC", fontsize=12)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.17, top=0.86, wspace=0.3)
    if heat is not None:
        bar = fig.colorbar(shown, ax=list(axes), fraction=0.015, pad=0.01)
        bar.set_label(heat_label)
    return save_figure(fig, path)


def registration_overlay(
    registered: np.ndarray,
    template_t1: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """Registration QC: the registered scan with the template's edges drawn over it.

    ``registered``, ``template_t1`` (0..1) and ``brain`` share one RAS+ template grid (``affine``). Edges:
    the template brain outline (cyan) and its grey/white-matter boundary (yellow, the T1 level halfway
    between the grey- and white-matter medians). Three slices per view through the brain (25/50/75 % of
    its extent), axes in MNI mm. A good registration puts both lines on the scan's own boundaries.
    """
    from matplotlib.lines import Line2D

    from raxnet.plotting import plt

    reg = np.asarray(registered, dtype=np.float32)
    tpl = np.asarray(template_t1, dtype=np.float32)
    inside = np.asarray(brain) != 0
    vals = np.sort(tpl[inside])
    # T1 template: the dark ~third of the brain is grey matter/CSF, the bright third white matter.
    gm_wm = 0.5 * (np.median(vals[: vals.size // 3]) + np.median(vals[-vals.size // 3 :]))
    vmin, vmax = _display_range(reg[inside])
    idx = np.argwhere(inside)
    lo, hi = idx.min(0), idx.max(0)
    spacing = np.asarray(voxel_spacing(affine))
    origin = affine[:3, 3]

    def extent(axes: tuple[int, int]) -> list[float]:
        (a, b) = axes
        n = reg.shape
        return [origin[a], origin[a] + (n[a] - 1) * spacing[a], origin[b], origin[b] + (n[b] - 1) * spacing[b]]

    views = [  # (name, axis cut, in-plane axes, labels)
        ("axial", 2, (0, 1), ("x (mm), left → right", "y (mm), posterior → anterior")),
        ("coronal", 1, (0, 2), ("x (mm), left → right", "z (mm), inferior → superior")),
        ("sagittal", 0, (1, 2), ("y (mm), posterior → anterior", "z (mm), inferior → superior")),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(12.0, 12.5))
    for row, (name, axis, plane, (xlabel, ylabel)) in zip(axes, views):
        for ax, frac in zip(row, (0.25, 0.5, 0.75)):
            k = int(round(lo[axis] + frac * (hi[axis] - lo[axis])))
            cut = [slice(None)] * 3
            cut[axis] = k
            img, t, b = reg[tuple(cut)], tpl[tuple(cut)], inside[tuple(cut)]
            ext = extent(plane)
            ax.imshow(img.T, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, extent=ext, interpolation="nearest")
            if b.any():
                ax.contour(b.T.astype(np.float32), levels=[0.5], colors=["#17becf"], linewidths=0.9, origin="lower",
                           extent=ext)
                ax.contour(np.where(b, t, 0).T, levels=[gm_wm], colors=["#ffdd00"], linewidths=0.6, origin="lower",
                           extent=ext)
            mm = origin[axis] + k * spacing[axis]
            ax.set_title(f"{name} {'xyz'[axis]} = {mm:.0f} mm")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.locator_params(nbins=4)
    handles = [Line2D([], [], color="#17becf", lw=2, label="template brain outline"),
               Line2D([], [], color="#ffdd00", lw=2, label="template grey/white-matter boundary")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title or "registration QC: template edges over the registered scan", fontsize=12)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.07, top=0.94, wspace=0.3, hspace=0.3)
    return save_figure(fig, path)
