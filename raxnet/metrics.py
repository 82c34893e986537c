"""3D segmentation metrics on binary volumes, with the ATLAS R2.0 challenge semantics.

Every function takes ``(prediction, truth, ...)`` — two binary arrays of the same shape (any non-zero
value is foreground) — and, where distances or volumes are involved, ``spacing=`` (voxel size in mm per
axis), and where lesions (connected components) are involved, ``connectivity=`` (6 = faces, 18 = faces +
edges, 26 = faces + edges + corners; default :data:`raxnet.components.LESION_CONNECTIVITY`, 26, as the
ATLAS R2.0 / ISLES 2022 scorer). HD95 surfaces always use the face neighbourhood
(:data:`raxnet.components.SURFACE_CONNECTIVITY`, as medpy). This module is the one implementation of
Dice in the package: stage 07's outer metrics (:func:`dice`, :func:`slice_dice`) and stage 08 use it.

Conventions for empty masks (the ATLAS scorer's where it defines one):

================  ===================  ===================  =======================
metric            both empty           truth empty only     prediction empty only
================  ===================  ===================  =======================
dice, iou         1.0                  0.0                  0.0
precision         1.0                  0.0                  0.0
recall            1.0                  0.0                  0.0
lesion_f1         1.0                  0.0                  0.0
hd95              0.0                  NaN                  NaN
================  ===================  ===================  =======================

Precision and recall follow Dice: when their denominator is zero the case is a perfect 1.0 if both
masks are empty and a failure (0.0) if exactly one is. HD95 is undefined (NaN) when exactly one mask is
empty — there is no surface to measure against; summaries exclude NaN from means and report how many
were undefined instead.

Lesion-wise detection (ATLAS R2.0): a true lesion (connected component of the truth) is detected (TP)
if any predicted voxel overlaps it, else it is missed (FN); a predicted component that overlaps no true
lesion is a false positive (FP). ``F1 = TP / (TP + (FP + FN) / 2)``. A true lesion covered by several
predicted components counts once; several true lesions touched by one predicted component all count.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from raxnet.components import LESION_CONNECTIVITY, SURFACE_CONNECTIVITY, label, structure

#: Keys returned by :func:`evaluate` (stage 08's ``subject_metrics.csv`` columns are owned by
#: :data:`raxnet.evaluation.SUBJECT_METRIC_COLUMNS`).
METRIC_KEYS: tuple[str, ...] = (
    "dice",
    "iou",
    "precision",
    "recall",
    "hd95_mm",
    "lesion_f1",
    "lesion_count_diff",
    "volume_diff_voxels",
    "volume_diff_mm3",
    "lesion_voxels",
    "pred_voxels",
    "truth_lesions",
    "pred_lesions",
)

Spacing = Sequence[float] | float | None


def _pair(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prediction) != 0
    t = np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    return p, t


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        return (float(spacing),) * ndim  # type: ignore[arg-type]
    sp = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    if len(sp) < ndim:
        raise ValueError(f"spacing {sp} has fewer than {ndim} values")
    sp = sp[:ndim]
    if any(s <= 0 for s in sp):
        raise ValueError(f"spacing must be positive, got {sp}")
    return sp


def crop_to_union(p: np.ndarray, t: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Both masks (and any ``others`` of their shape) cropped to the bounding box of the masks' union,
    padded by one background (zero) voxel.

    Every metric here is unchanged by this (all foreground, every component and every surface voxel
    stays inside; outside was background or the array border, which erosion also treats as background)
    and a whole-brain 1 mm volume shrinks to the lesion's neighbourhood.
    """
    union = p | t
    if not union.any():
        return (p, t, *others)
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(hit[0], hit[-1] + 1))
    return tuple(np.pad(a[tuple(box)], 1) for a in (p, t, *others))


def _ratio(num: int, den: int, both_empty: bool) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num) / float(den)


def slice_dice(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of each item of two binary stacks ``(n, ...)`` (e.g. the slices of a plane), float64 ``(n,)``.

    ``2|P∩T| / (|P| + |T|)`` per item; 1.0 where both are empty (the 3D convention of :func:`dice`).
    """
    p, t = _pair(prediction, truth)
    p = p.reshape(len(p), -1)
    t = t.reshape(len(t), -1)
    inter = np.count_nonzero(p & t, axis=1)
    total = np.count_nonzero(p, axis=1) + np.count_nonzero(t, axis=1)
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0).astype(np.float64)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Sørensen–Dice ``2|P∩T| / (|P| + |T|)``; 1.0 when both masks are empty."""
    p, t = _pair(prediction, truth)
    return float(slice_dice(p.reshape(1, -1), t.reshape(1, -1))[0])


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Jaccard ``|P∩T| / |P∪T|``; 1.0 when both masks are empty."""
    p, t = _pair(prediction, truth)
    union = int(np.count_nonzero(p | t))
    return _ratio(int(np.count_nonzero(p & t)), union, union == 0)


def precision(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Voxel precision ``|P∩T| / |P|``; empty prediction: 1.0 if truth is empty too, else 0.0."""
    p, t = _pair(prediction, truth)
    n_p = int(np.count_nonzero(p))
    both_empty = n_p == 0 and not t.any()
    return _ratio(int(np.count_nonzero(p & t)), n_p, both_empty)


def recall(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Voxel recall (sensitivity) ``|P∩T| / |T|``; empty truth: 1.0 if prediction is empty too, else 0.0."""
    p, t = _pair(prediction, truth)
    n_t = int(np.count_nonzero(t))
    both_empty = n_t == 0 and not p.any()
    return _ratio(int(np.count_nonzero(p & t)), n_t, both_empty)


def volume_difference(prediction: np.ndarray, truth: np.ndarray, *, spacing: Spacing = None) -> tuple[int, float]:
    """Absolute volume difference ``| |P| - |T| |`` as ``(voxels, mm³)`` (mm³ = voxels × voxel volume)."""
    p, t = _pair(prediction, truth)
    voxels = abs(int(np.count_nonzero(p)) - int(np.count_nonzero(t)))
    voxel_mm3 = float(np.prod(_spacing(spacing, p.ndim)))
    return voxels, voxels * voxel_mm3


def _surface(mask: np.ndarray, connectivity: int) -> np.ndarray:
    # Voxels on the array border count as surface (erosion's border_value=0), as in medpy.
    eroded = ndimage.binary_erosion(mask, structure=structure(connectivity, mask.ndim), border_value=0)
    return mask & ~eroded


def surface_distances(
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Spacing = None,
    connectivity: int = SURFACE_CONNECTIVITY,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (prediction surface → truth surface, truth → prediction).

    Surfaces are the masks minus their erosion (``connectivity`` neighbourhood); distances come from
    ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``. Both masks must be non-empty.
    """
    p, t = _pair(prediction, truth)
    if not p.any() or not t.any():
        raise ValueError("surface distances need two non-empty masks")
    sp = _spacing(spacing, p.ndim)
    p, t = crop_to_union(p, t)
    s_p = _surface(p, connectivity)
    s_t = _surface(t, connectivity)
    dist_to_t = ndimage.distance_transform_edt(~s_t, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~s_p, sampling=sp)
    return dist_to_t[s_p].astype(np.float64), dist_to_p[s_t].astype(np.float64)


def hd95(
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Spacing = None,
    connectivity: int = SURFACE_CONNECTIVITY,
) -> float:
    """95th-percentile symmetric surface distance (mm).

    The 95th percentile (linear interpolation) of the pooled directed surface distances in both
    directions (as medpy's ``hd95``). Both empty → 0.0; exactly one empty → NaN (undefined).
    """
    p, t = _pair(prediction, truth)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return float("nan")
    d_pt, d_tp = surface_distances(p, t, spacing=spacing, connectivity=connectivity)
    return float(np.percentile(np.concatenate([d_pt, d_tp]), 95))


def lesion_detection(
    prediction: np.ndarray, truth: np.ndarray, *, connectivity: int = LESION_CONNECTIVITY
) -> dict[str, int]:
    """Lesion-wise counts ``{tp, fn, fp, n_truth, n_pred}`` (ATLAS R2.0 overlap rule, see module doc)."""
    p, t = _pair(prediction, truth)
    t_lab, n_t = label(t, connectivity)
    p_lab, n_p = label(p, connectivity)
    detected = np.unique(t_lab[p & t])
    tp = int(np.count_nonzero(detected))
    touching = np.unique(p_lab[p & t])
    fp = n_p - int(np.count_nonzero(touching))
    return {"tp": tp, "fn": n_t - tp, "fp": fp, "n_truth": n_t, "n_pred": n_p}


def lesion_f1(prediction: np.ndarray, truth: np.ndarray, *, connectivity: int = LESION_CONNECTIVITY) -> float:
    """Lesion-wise F1 ``TP / (TP + (FP + FN) / 2)``; 1.0 when both masks are empty (ATLAS R2.0)."""
    c = lesion_detection(prediction, truth, connectivity=connectivity)
    denom = c["tp"] + (c["fp"] + c["fn"]) / 2.0
    return 1.0 if denom == 0 else c["tp"] / denom


def lesion_count_difference(
    prediction: np.ndarray, truth: np.ndarray, *, connectivity: int = LESION_CONNECTIVITY
) -> int:
    """Absolute difference of the numbers of connected components (ATLAS "simple lesion count")."""
    p, t = _pair(prediction, truth)
    return abs(label(p, connectivity)[1] - label(t, connectivity)[1])


def evaluate(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: Spacing = None,
    connectivity: int = LESION_CONNECTIVITY,
) -> dict[str, float | int]:
    """All metrics of one prediction as a dict with the keys of :data:`METRIC_KEYS`.

    ``lesion_voxels`` / ``pred_voxels`` are the truth / prediction voxel counts, ``truth_lesions`` /
    ``pred_lesions`` their lesion (connected component) counts; ``hd95_mm`` may be NaN.
    """
    p, t = _pair(prediction, truth)
    p, t = crop_to_union(p, t)
    c = lesion_detection(p, t, connectivity=connectivity)
    denom = c["tp"] + (c["fp"] + c["fn"]) / 2.0
    vd_vox, vd_mm3 = volume_difference(p, t, spacing=spacing)
    return {
        "dice": dice(p, t),
        "iou": iou(p, t),
        "precision": precision(p, t),
        "recall": recall(p, t),
        "hd95_mm": hd95(p, t, spacing=spacing),
        "lesion_f1": 1.0 if denom == 0 else c["tp"] / denom,
        "lesion_count_diff": abs(c["n_pred"] - c["n_truth"]),
        "volume_diff_voxels": vd_vox,
        "volume_diff_mm3": vd_mm3,
        "lesion_voxels": int(np.count_nonzero(t)),
        "pred_voxels": int(np.count_nonzero(p)),
        "truth_lesions": c["n_truth"],
        "pred_lesions": c["n_pred"],
    }
