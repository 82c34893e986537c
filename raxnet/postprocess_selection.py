"""Post-processing chosen on validation data, never on the hold-out (nnU-Net's way).

After the fold models are trained, stage 08 predicts the train subjects *out of fold* (a subject of fold
``k`` by the ``fold_<k>`` models, which never saw it) and scores, per subject, every candidate of a small
grid (:func:`score_candidates`): fusion method × probability threshold × minimum lesion size in mm³ ×
minimum peak probability (``min_peak``, the hysteresis rule of :mod:`raxnet.postprocess`; 0 = none).
:func:`choose` then decides, in the spirit of nnU-Net's ``determine_postprocessing`` (a post-processing
step is kept only if it improves the validation metric):

1. without lesion removal: the fusion method and threshold with the best mean validation metric (ties: the
   method listed first, then the threshold closest to ``[fusion].threshold``);
2. with lesion removal: the best candidate of the whole grid that removes lesions by size or by peak (minimum
   size or ``min_peak`` above 0; ties: the smallest size, the lowest peak, then as in 1). It wins only if it
   beats 1 by more than ``min_gain``: removing small lesions trades small-lesion detection for fewer specks,
   so a gain within the noise of a few dozen validation subjects must not buy it. Removal is judged over the
   whole grid, not only at the threshold of 1, because the two interact: without removal a metric that counts
   lesions favours a high threshold (fewer specks), with removal a lower one (the specks go anyway, the
   lesions keep their extent).

The metric (``metric``): ``dice``, ``lesion_f1`` (:mod:`raxnet.metrics`) or ``dice_lesion_f1``, their
per-subject mean -- voxel overlap and lesion detection weighed equally, as the ATLAS challenge ranks on both
(measured on the 2026-12-04 demo weights' 72 out-of-fold subjects: Dice alone keeps every speck, lesion F1 0.32; the
mean removes lesions under 200 mm³ for 0.0009 Dice and lesion F1 0.49).

3. the large-lesion outline (:func:`raxnet.postprocess.outline_large`), given the choice of 1-2: every
   (``large_mm3``, ``large_threshold``, ``large_fragment_mm3``) of its grid is scored on the same subjects
   (:func:`score_large_candidates`, from each subject's probabilities where they could make a lesion,
   :func:`keep`) and the best wins only if it beats the choice without it by more than ``min_gain``
   (:func:`choose_large`).

The hold-out subjects are never passed to any of these functions: stage 08 applies the choice to them afterwards
(method ``selected``) and ``raxnet export-weights`` stores it in ``weights.json`` for ``raxnet predict``.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from raxnet.components import LESION_CONNECTIVITY, label
from raxnet.errors import ConfigError
from raxnet.metrics import crop_to_union, dice, lesion_f1
from raxnet.postprocess import (
    ALL_METHODS,
    component_peaks,
    fuse,
    fused_probability,
    kept_labels,
    min_voxels,
    outline_large,
    postprocess_with_probability,
)

#: Validation metrics a choice can be made on (higher is better for both).
METRICS: tuple[str, ...] = ("dice", "lesion_f1", "dice_lesion_f1")
KEYS = ["method", "threshold", "min_lesion_mm3", "min_peak"]
LARGE_KEYS = ["large_mm3", "large_threshold", "large_fragment_mm3"]
CANDIDATE_COLUMNS = [*KEYS, "n_subjects", "dice_mean", "lesion_f1_mean",
                     "dice_lesion_f1_mean"]


def check_grid(methods: Sequence[str], thresholds: Sequence[float], sizes_mm3: Sequence[float],
               metric: str, min_gain: float = 0.0, peaks: Sequence[float] = (),
               large: Mapping[str, Sequence[float]] | None = None) -> None:
    """ConfigError for an empty or out-of-range candidate grid (``large``: the outline grid by
    :data:`LARGE_KEYS`)."""
    for key, values in (large or {}).items():
        if key not in LARGE_KEYS:
            raise ConfigError(f"unknown large-lesion grid key {key!r}; expected {', '.join(LARGE_KEYS)}")
        bad_v = [v for v in values if not (0.0 < float(v) < 1.0 if key == "large_threshold" else float(v) >= 0)]
        if bad_v:
            raise ConfigError(f"fusion.select_{key}: {bad_v} out of range "
                              f"({'(0, 1)' if key == 'large_threshold' else '>= 0'})")
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or not methods:
        raise ConfigError(f"fusion.select_methods: {bad or 'empty'}; expected some of {', '.join(ALL_METHODS)}")
    if not thresholds or any(not 0.0 < float(t) < 1.0 for t in thresholds):
        raise ConfigError(f"fusion.select_thresholds must be values in (0, 1), got {list(thresholds)}")
    if any(float(v) < 0 for v in sizes_mm3):
        raise ConfigError(f"fusion.select_min_lesion_mm3 must be >= 0, got {list(sizes_mm3)}")
    if any(not 0.0 <= float(v) < 1.0 for v in peaks):
        raise ConfigError(f"fusion.select_min_peak must be values in [0, 1), got {list(peaks)}")
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
    peaks: Sequence[float] = (),
    connectivity: int = LESION_CONNECTIVITY,
    weights: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per candidate (method, threshold, min_lesion_mm3, min_peak) with this subject's Dice and
    lesion F1. A peak at or below the threshold removes nothing, so only ``min_peak`` 0 and peaks above the
    threshold are candidates."""
    sizes = sorted({0.0, *(float(v) for v in sizes_mm3)})
    all_peaks = sorted({0.0, *(float(v) for v in peaks)})
    rows = []
    for method in methods:
        prob = fused_probability(probs, method, weights) if any(all_peaks) else None
        for t in thresholds:
            mask = fuse(probs, method, float(t), weights)
            fused, t_crop, *prob_crop = crop_to_union(mask, truth, *([] if prob is None else [prob]))
            labels, n = label(fused, connectivity)
            component_sizes = np.bincount(labels.ravel(), minlength=n + 1)
            peak_of = component_peaks(labels, n, prob_crop[0]) if prob_crop else None
            scored: dict[bytes, dict[str, float]] = {}  # same components kept -> same mask -> same scores
            for v in sizes:
                k = min_voxels(v, spacing)
                for pk in (p for p in all_peaks if p == 0.0 or p > float(t)):
                    kept = kept_labels(component_sizes, k, peak_of, pk)
                    key = kept.tobytes()
                    if key not in scored:
                        m = kept[labels]  # bool: the metrics read any non-zero voxel as foreground
                        scored[key] = {"dice": dice(m, t_crop),
                                       "lesion_f1": lesion_f1(m, t_crop, connectivity=connectivity)}
                    rows.append({"method": method, "threshold": float(t), "min_lesion_mm3": v, "min_peak": pk,
                                 **scored[key]})
    return rows


def summarise_candidates(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Mean validation scores per candidate over subjects (:data:`CANDIDATE_COLUMNS`), in grid order."""
    df = pd.DataFrame(rows)
    if "min_peak" not in df:  # rows scored without a peak grid
        df["min_peak"] = 0.0
    g = df.groupby(KEYS, sort=False)
    out = g.agg(n_subjects=("dice", "size"), dice_mean=("dice", "mean"), lesion_f1_mean=("lesion_f1", "mean"))
    out["dice_lesion_f1_mean"] = (out["dice_mean"] + out["lesion_f1_mean"]) / 2.0  # = mean of per-subject means
    return out.reset_index()[CANDIDATE_COLUMNS]


def choose(candidates: pd.DataFrame, *, metric: str = "dice", default_threshold: float = 0.5,
           methods: Sequence[str] | None = None, min_gain: float = 0.0) -> dict[str, Any]:
    """The chosen (method, threshold, min_lesion_mm3, min_peak) from :func:`summarise_candidates` (module doc).

    Returns the choice with its validation score (``score``) and the best score without lesion removal
    (``score_without_removal``, step 1).
    """
    col = f"{metric}_mean"
    order = list(methods) if methods else list(dict.fromkeys(candidates["method"]))
    if "min_peak" not in candidates:
        candidates = candidates.assign(min_peak=0.0)
    ranked = candidates.assign(_m=candidates["method"].map({m: i for i, m in enumerate(order)}),
                               _t=(candidates["threshold"] - default_threshold).abs())
    # best score first; ties: the smallest size, the lowest peak, the listed method first, then the threshold
    # nearest the default
    ranked = ranked.sort_values([col, "min_lesion_mm3", "min_peak", "_m", "_t"],
                                ascending=[False, True, True, True, True], kind="stable")
    removes = (ranked["min_lesion_mm3"] > 0) | (ranked["min_peak"] > 0)
    best = ranked[~removes].iloc[0]
    chosen = best
    removal = ranked[removes]
    if len(removal) and removal.iloc[0][col] > float(best[col]) + float(min_gain):
        chosen = removal.iloc[0]
    return {
        "fusion": str(chosen["method"]),
        "threshold": float(chosen["threshold"]),
        "min_lesion_mm3": float(chosen["min_lesion_mm3"]),
        "min_peak": float(chosen["min_peak"]),
        "metric": metric,
        "min_gain": float(min_gain),
        "score": float(chosen[col]),
        "score_without_removal": float(best[col]),
        "n_subjects": int(chosen["n_subjects"]),
    }


class Kept(NamedTuple):
    """A subject's plane probabilities and truth, kept compactly between the two selection passes: only the
    voxels where some plane is ``>= min_threshold`` or the truth is set (:func:`keep`)."""

    shape: tuple[int, ...]
    index: np.ndarray  # flat indices into ``shape`` of the kept voxels
    values: dict[str, np.ndarray]  # per plane, its probabilities there
    truth: np.ndarray  # per kept voxel, whether it is a truth voxel
    spacing: tuple[float, ...]


def keep(probs: Mapping[str, np.ndarray], truth: np.ndarray, spacing: Sequence[float],
         min_threshold: float) -> Kept:
    """What :func:`score_large_candidates` needs of a subject, without the rest of the volume.

    Elsewhere every plane is under ``min_threshold``, so no fused mask of a threshold ``>= min_threshold``
    reaches it (a mean, a weighted mean or a vote of the planes is never above their maximum), nor any peak or
    redrawn voxel: :func:`unkeep`'s zeros there give every candidate the same mask. A 1 mm scan keeps its lesions
    and specks (kilobytes to a few MB) instead of three 35 MB volumes.
    """
    truth = np.asarray(truth) != 0
    on = truth.copy()
    for p in probs.values():
        on |= np.asarray(p) >= min_threshold
    index = np.flatnonzero(on)
    return Kept(truth.shape, index, {k: np.asarray(v).ravel()[index].astype(np.float32) for k, v in probs.items()},
                truth.ravel()[index], tuple(float(v) for v in spacing))


def unkeep(kept: Kept) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Plane probabilities and truth of :func:`keep`, cropped to the kept voxels' bounding box."""
    if not kept.index.size:  # nothing predicted, no truth: one background voxel
        one = (1,) * len(kept.shape)
        return {k: np.zeros(one, np.float32) for k in kept.values}, np.zeros(one, bool)
    coords = np.unravel_index(kept.index, kept.shape)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    local = tuple(c - b.start for c, b in zip(coords, box))
    shape = tuple(b.stop - b.start for b in box)
    probs = {}
    for k, v in kept.values.items():
        probs[k] = np.zeros(shape, np.float32)
        probs[k][local] = v
    truth = np.zeros(shape, bool)
    truth[local] = kept.truth
    return probs, truth


def score_large_candidates(
    probs: Mapping[str, np.ndarray],
    truth: np.ndarray,
    spacing: Sequence[float],
    base: Mapping[str, Any],
    *,
    large_mm3: Sequence[float],
    large_thresholds: Sequence[float],
    fragments_mm3: Sequence[float],
    connectivity: int = LESION_CONNECTIVITY,
    weights: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per large-lesion outline candidate on top of ``base`` (a :func:`choose` result), plus the
    base itself (``large_mm3`` 0), with this subject's Dice and lesion F1. Outline thresholds at or below the
    base threshold redraw nothing and are not candidates."""
    threshold = float(base["threshold"])
    # the base mask and its fused map are the same for every candidate: made once, then only redrawn
    mask, prob = postprocess_with_probability(
        probs, fusion=base["fusion"], threshold=threshold, spacing=spacing,
        min_lesion_mm3=float(base["min_lesion_mm3"]), min_peak=float(base["min_peak"]),
        connectivity=connectivity, weights=weights)
    truth = np.asarray(truth) != 0
    cands = [(0.0, 0.0, 0.0)] + [(float(v), float(t), float(f)) for v in large_mm3 if float(v) > 0
                                 for t in large_thresholds if float(t) > threshold
                                 for f in fragments_mm3]
    rows = []
    for v, t, f in cands:
        m = outline_large(mask, prob, spacing, v, t, f, connectivity) != 0
        rows.append({"large_mm3": v, "large_threshold": t, "large_fragment_mm3": f, "dice": dice(m, truth),
                     "lesion_f1": lesion_f1(m, truth, connectivity=connectivity)})
    return rows


def choose_large(rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, metric: str = "dice",
                 min_gain: float = 0.0) -> dict[str, Any]:
    """The large-lesion outline from :func:`score_large_candidates` rows of all subjects (module doc, step 3).

    Returns ``large_mm3``, ``large_threshold``, ``large_fragment_mm3`` (all 0: no outline), the candidate's
    mean ``score`` and ``score_without`` (the base's), and the per-candidate means as ``candidates``.
    """
    df = pd.DataFrame(rows)
    g = df.groupby(LARGE_KEYS, sort=False)
    cand = g.agg(n_subjects=("dice", "size"), dice_mean=("dice", "mean"), lesion_f1_mean=("lesion_f1", "mean"))
    cand["dice_lesion_f1_mean"] = (cand["dice_mean"] + cand["lesion_f1_mean"]) / 2.0
    cand = cand.reset_index()
    col = f"{metric}_mean"
    base = cand[cand["large_mm3"] == 0].iloc[0]
    # best first; ties: the largest lesions only, then the lowest outline threshold, the smallest fragment floor
    ranked = cand[cand["large_mm3"] > 0].sort_values(
        [col, "large_mm3", "large_threshold", "large_fragment_mm3"], ascending=[False, False, True, True],
        kind="stable")
    chosen = base
    if len(ranked) and ranked.iloc[0][col] > float(base[col]) + float(min_gain):
        chosen = ranked.iloc[0]
    return {**{k: float(chosen[k]) for k in LARGE_KEYS}, "score": float(chosen[col]),
            "score_without": float(base[col]), "candidates": cand}
