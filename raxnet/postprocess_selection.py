"""Post-processing chosen on validation data, never on the hold-out (nnU-Net's way).

After the fold models are trained, stage 08 predicts the train subjects *out of fold* (a subject of fold
``k`` by the ``fold_<k>`` models, which never saw it) and scores, per subject, every candidate of a small
grid (:func:`score_candidates`): fusion method × probability threshold × minimum lesion size in mm³.
:func:`choose` then decides, in the spirit of nnU-Net's ``determine_postprocessing`` (a post-processing
step is kept only if it improves the validation metric):

1. fusion method and threshold: the pair with the best mean validation metric *without* lesion removal
   (ties: the method listed first, then the threshold closest to ``[fusion].threshold``);
2. minimum lesion size: 0 (keep every lesion) unless a size in the grid beats it by more than
   ``min_gain`` on the mean validation metric for that method and threshold; the best such size (ties:
   the smallest). Removing small lesions trades small-lesion detection for fewer specks, so a gain
   within the noise of a few dozen validation subjects must not buy it.

The hold-out subjects are never passed to either function: stage 08 applies the choice to them afterwards
(method ``selected``) and ``raxnet export-weights`` stores it in ``weights.json`` for ``raxnet predict``.
Scores come from :mod:`raxnet.metrics` (Dice or lesion-wise F1, the ``metric`` setting).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from raxnet.components import LESION_CONNECTIVITY, label
from raxnet.errors import ConfigError
from raxnet.metrics import crop_to_union, dice, lesion_f1
from raxnet.postprocess import ALL_METHODS, fuse, keep_large_components, min_voxels

#: Validation metrics a choice can be made on (higher is better for both).
METRICS: tuple[str, ...] = ("dice", "lesion_f1")
CANDIDATE_COLUMNS = ["method", "threshold", "min_lesion_mm3", "n_subjects", "dice_mean", "lesion_f1_mean"]


def check_grid(methods: Sequence[str], thresholds: Sequence[float], sizes_mm3: Sequence[float],
               metric: str, min_gain: float = 0.0) -> None:
    """ConfigError for an empty or out-of-range candidate grid."""
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or not methods:
        raise ConfigError(f"fusion.select_methods: {bad or 'empty'}; expected some of {', '.join(ALL_METHODS)}")
    if not thresholds or any(not 0.0 < float(t) < 1.0 for t in thresholds):
        raise ConfigError(f"fusion.select_thresholds must be values in (0, 1), got {list(thresholds)}")
    if any(float(v) < 0 for v in sizes_mm3):
        raise ConfigError(f"fusion.select_min_lesion_mm3 must be >= 0, got {list(sizes_mm3)}")
    if metric not in METRICS:
        raise ConfigError(f"fusion.select_metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not 0.0 <= float(min_gain) < 1.0:
        raise ConfigError(f"fusion.select_min_gain must be in [0, 1), got {min_gain}")


def score_candidates(
    probs: Mapping[str, np.ndarray],
    truth: np.ndarray,
    spacing: Sequence[float],
    *,
    methods: Sequence[str],
    thresholds: Sequence[float],
    sizes_mm3: Sequence[float],
    connectivity: int = LESION_CONNECTIVITY,
    weights: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per candidate (method, threshold, min_lesion_mm3) with this subject's Dice and lesion F1."""
    sizes = sorted({0.0, *(float(v) for v in sizes_mm3)})
    rows = []
    for method in methods:
        for t in thresholds:
            fused, t_crop = crop_to_union(fuse(probs, method, float(t), weights), truth)
            labels, n = label(fused, connectivity)
            component_sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            kept, scores = -1, {}
            for v in sizes:
                k = min_voxels(v, spacing)
                n_kept = int((component_sizes >= max(k, 1)).sum())
                if n_kept != kept:  # a size that removes nothing more gives the same mask: same scores
                    mask = keep_large_components(labels, n, k)
                    scores = {"dice": dice(mask, t_crop),
                              "lesion_f1": lesion_f1(mask, t_crop, connectivity=connectivity)}
                    kept = n_kept
                rows.append({"method": method, "threshold": float(t), "min_lesion_mm3": v, **scores})
    return rows


def summarise_candidates(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Mean validation scores per candidate over subjects (:data:`CANDIDATE_COLUMNS`), in grid order."""
    df = pd.DataFrame(rows)
    keys = ["method", "threshold", "min_lesion_mm3"]
    g = df.groupby(keys, sort=False)
    out = g.agg(n_subjects=("dice", "size"), dice_mean=("dice", "mean"), lesion_f1_mean=("lesion_f1", "mean"))
    return out.reset_index()[CANDIDATE_COLUMNS]


def choose(candidates: pd.DataFrame, *, metric: str = "dice", default_threshold: float = 0.5,
           methods: Sequence[str] | None = None, min_gain: float = 0.0) -> dict[str, Any]:
    """The chosen (method, threshold, min_lesion_mm3) from :func:`summarise_candidates` (module doc).

    Returns the choice with its validation score, the score of the same method and threshold without
    lesion removal, and that of the best method and threshold before removal was considered.
    """
    col = f"{metric}_mean"
    order = list(methods) if methods else list(dict.fromkeys(candidates["method"]))
    raw = candidates[candidates["min_lesion_mm3"] == 0].copy()
    raw = raw.assign(_m=raw["method"].map({m: i for i, m in enumerate(order)}),
                     _t=(raw["threshold"] - default_threshold).abs())
    # best score first; ties: listed method first, then the threshold closest to the default
    raw = raw.sort_values([col, "_m", "_t"], ascending=[False, True, True], kind="stable")
    best = raw.iloc[0]
    same = candidates[(candidates["method"] == best["method"]) & (candidates["threshold"] == best["threshold"])]
    same = same.sort_values("min_lesion_mm3", kind="stable")
    chosen = same.iloc[0]  # min_lesion_mm3 == 0
    bar = float(chosen[col]) + float(min_gain)
    for _, row in same.iloc[1:].iterrows():
        if row[col] > bar and row[col] > chosen[col]:  # removal kept only if it helps by more than min_gain
            chosen = row
    return {
        "fusion": str(chosen["method"]),
        "threshold": float(chosen["threshold"]),
        "min_lesion_mm3": float(chosen["min_lesion_mm3"]),
        "metric": metric,
        "min_gain": float(min_gain),
        "score": float(chosen[col]),
        "score_without_removal": float(best[col]),
        "n_subjects": int(chosen["n_subjects"]),
    }
