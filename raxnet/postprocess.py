"""From plane probabilities to a lesion mask: the threshold rule, three-plane fusion, small-lesion removal.

Pure array functions (no file, no model), shared by stage 07's outer metrics, stage 08 and ``raxnet predict``.

Threshold rule (the only one in the package): a voxel is lesion when its probability is ``>= threshold``
(:func:`binarise`). Fusion methods (``probs`` per plane, ``threshold`` t):

``axial``, ``sagittal``, ``coronal``
    one plane alone, ``p >= t``.
``mean``
    mean of the three probabilities ``>= t`` (the original RAX-Net fusion).
``vote``
    majority vote of the thresholded planes (at least 2 of 3 with ``p >= t``).
``weighted``
    weighted mean probability ``>= t`` (weights normalised to sum 1).

Small-lesion removal (:func:`remove_small_lesions`) drops connected components (``connectivity``,
default :data:`raxnet.components.LESION_CONNECTIVITY`) smaller than a volume in mm³; the voxel count
it corresponds to on a grid is :func:`min_voxels`.

Peak rule (hysteresis, ``min_peak``): a component is kept only if its highest probability -- in the map the
method thresholds (:func:`fused_probability`; ``vote``: the planes' mean) -- reaches ``min_peak``. A low
threshold then gives a lesion its full extent while faint specks without a confident core go; 0 keeps all.

Large-lesion outline (:func:`outline_large`, ``large_mm3`` > 0): a threshold low enough to find small lesions
draws large ones too wide, so a kept lesion of at least ``large_mm3`` is redrawn as its voxels with probability
``>= large_threshold``; pieces of it that this leaves smaller than ``large_fragment_mm3`` go (other lesions are
untouched). Measured on the 2026-12-07 weights' 108 out-of-fold subjects
(``bench/results/size_rule_2026-12-07``): threshold 0.3 outlines lesions over 10 mL at Dice 0.839, 0.6 at 0.892,
but 0.6 everywhere loses small lesions; redrawing only the large ones keeps both.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from raxnet.components import LESION_CONNECTIVITY, label
from raxnet.errors import ConfigError
from raxnet.planes import PLANES

FUSED_METHODS: tuple[str, ...] = ("mean", "vote", "weighted")
ALL_METHODS: tuple[str, ...] = tuple(PLANES) + FUSED_METHODS
CLEAN_SUFFIX = "_clean"

Probs = Mapping[str, np.ndarray] | Sequence[np.ndarray]


def binarise(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 mask of ``prob >= threshold`` (the package's one threshold rule)."""
    return (np.asarray(prob) >= threshold).astype(np.uint8)


def _stack(probs: Probs) -> tuple[np.ndarray, list[Any]]:
    keys = list(probs) if isinstance(probs, Mapping) else list(range(len(probs)))
    if not keys:
        raise ValueError("no probability volumes to fuse")
    arrays = [np.asarray(probs[k]) for k in keys]  # type: ignore[index]
    # keep float64 input exact (a float32 cast can move 0.5 just below the threshold); ints -> float32
    dtype = np.result_type(np.float32, *arrays)
    arrays = [a.astype(dtype, copy=False) for a in arrays]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"probability volumes differ in shape: {[a.shape for a in arrays]}")
    return np.stack(arrays), keys


def mean_probability(probs: Probs) -> np.ndarray:
    """float64 mean of the probability volumes."""
    # float64 so that e.g. (0.6 + 0.6 + 0.3) / 3 is not pushed below 0.5 by float32 rounding.
    return _stack(probs)[0].mean(axis=0, dtype=np.float64)


def fuse_mean(probs: Probs, threshold: float = 0.5) -> np.ndarray:
    """uint8 mask where the mean probability of the planes is ``>= threshold``."""
    return binarise(mean_probability(probs), threshold)


def fuse_vote(probs: Probs, threshold: float = 0.5) -> np.ndarray:
    """uint8 majority vote: more than half of the planes have probability ``>= threshold`` (2 of 3)."""
    stack, _ = _stack(probs)
    votes = binarise(stack, threshold).sum(axis=0)
    return (2 * votes > stack.shape[0]).astype(np.uint8)


def weighted_mean(probs: Probs, weights: Mapping[str, float] | Sequence[float]) -> np.ndarray:
    """float64 weighted mean of the probability volumes.

    ``weights`` are aligned with ``probs`` (by key for mappings, by position otherwise), must be
    non-negative with a positive sum, and are normalised here.
    """
    stack, keys = _stack(probs)
    if isinstance(weights, Mapping):
        if isinstance(probs, Mapping):
            missing = [k for k in keys if k not in weights]
            if missing:
                raise ValueError(f"no weight for {missing}")
            w = np.array([float(weights[k]) for k in keys])
        else:
            raise ValueError("weights given by name need probabilities given by name")
    else:
        w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (stack.shape[0],):
        raise ValueError(f"{w.size} weights for {stack.shape[0]} probability volumes")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    w = w / w.sum()
    return np.tensordot(w, stack.astype(np.float64), axes=1)


def fuse_weighted(probs: Probs, weights: Mapping[str, float] | Sequence[float], threshold: float = 0.5) -> np.ndarray:
    """uint8 mask where the weighted mean probability (:func:`weighted_mean`) is ``>= threshold``."""
    return binarise(weighted_mean(probs, weights), threshold)


def kept_labels(sizes: np.ndarray, min_size: int, peaks: np.ndarray | None, min_peak: float) -> np.ndarray:
    """Per label 0..n (``sizes``: voxel counts, ``np.bincount`` of the labels), whether the component is kept:
    at least ``min_size`` voxels and, when ``peaks`` (:func:`component_peaks`) is given, a peak probability
    ``>= min_peak``. Label 0 (background) never is."""
    keep = np.asarray(sizes) >= max(int(min_size), 1)
    if peaks is not None and min_peak > 0:
        keep &= np.asarray(peaks) >= min_peak
    keep[0] = False
    return keep


def keep_large_components(labels: np.ndarray, n: int, min_size: int, peaks: np.ndarray | None = None,
                          min_peak: float = 0.0) -> np.ndarray:
    """uint8 mask of the labelled components (1..n) kept by :func:`kept_labels`."""
    keep = kept_labels(np.bincount(labels.ravel(), minlength=n + 1), min_size, peaks, min_peak)
    return keep[labels].astype(np.uint8)


def component_peaks(labels: np.ndarray, n: int, prob: np.ndarray) -> np.ndarray:
    """Highest ``prob`` inside each labelled component: array of n + 1 values (index 0, background: 0)."""
    peaks = np.zeros(n + 1, dtype=np.float64)
    if n:
        # over the labelled voxels only: scipy's per-label maximum sorts its whole input (0.86 s on a 1 mm
        # volume, 0.03 s on its lesion voxels)
        fg = labels > 0
        np.maximum.at(peaks, labels[fg], np.asarray(prob, dtype=np.float64)[fg])
    return peaks


def remove_small_components(mask: np.ndarray, min_size: int, connectivity: int = LESION_CONNECTIVITY) -> np.ndarray:
    """uint8 copy of ``mask`` without connected components of fewer than ``min_size`` voxels."""
    m = np.asarray(mask) != 0
    if min_size <= 1 or not m.any():
        return m.astype(np.uint8)
    return keep_large_components(*label(m, connectivity), min_size)


def min_voxels(min_lesion_mm3: float, spacing: Sequence[float]) -> int:
    """Smallest whole number of voxels (of size ``spacing`` mm) whose volume is ``>= min_lesion_mm3``."""
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    if min_lesion_mm3 <= 0:
        return 0
    # round first so that 40 mm³ on an 8 mm³ grid is exactly 5 voxels, not 6 after float error
    return int(math.ceil(round(float(min_lesion_mm3) / voxel_mm3, 9)))


def remove_small_lesions(mask: np.ndarray, min_lesion_mm3: float, spacing: Sequence[float],
                         connectivity: int = LESION_CONNECTIVITY) -> np.ndarray:
    """uint8 copy of ``mask`` without lesions (components) smaller than ``min_lesion_mm3``."""
    return remove_small_components(mask, min_voxels(min_lesion_mm3, spacing), connectivity)


def method_names(methods: Iterable[str], min_size: int) -> list[str]:
    """Validated method list, followed by ``<fused>_clean`` variants when ``min_size > 0``."""
    out: list[str] = []
    for m in methods:
        if m not in ALL_METHODS:
            raise ConfigError(f"unknown fusion method {m!r}; expected some of {', '.join(ALL_METHODS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise ConfigError("fusion.methods is empty")
    if min_size > 0:
        out += [f"{m}{CLEAN_SUFFIX}" for m in list(out) if m in FUSED_METHODS]
    return out


def fuse(probs: Mapping[str, np.ndarray], method: str, threshold: float = 0.5,
         weights: Mapping[str, float] | None = None, *, prob: np.ndarray | None = None) -> np.ndarray:
    """uint8 mask of one method of :data:`ALL_METHODS` from per-plane probability volumes; ``prob``, when the
    caller already has it, is ``method``'s :func:`fused_probability` (not computed again)."""
    if method == "vote":
        return fuse_vote({p: probs[p] for p in PLANES if p in probs}, threshold)
    return binarise(fused_probability(probs, method, weights) if prob is None else prob, threshold)


def fused_probability(probs: Mapping[str, np.ndarray], method: str,
                      weights: Mapping[str, float] | None = None) -> np.ndarray:
    """The probability map ``method`` thresholds (``vote``, which thresholds each plane: the planes' mean)."""
    planes = {p: probs[p] for p in PLANES if p in probs}
    if method in PLANES:
        return np.asarray(probs[method])
    if method in ("mean", "vote"):
        return mean_probability(planes)
    if method == "weighted":
        return weighted_mean(planes, weights or {p: 1.0 for p in planes})
    raise ConfigError(f"unknown fusion method {method!r}; expected one of {', '.join(ALL_METHODS)}")


def fuse_all(
    probs: Mapping[str, np.ndarray],
    methods: Sequence[str],
    *,
    threshold: float = 0.5,
    weights: Mapping[str, float] | None = None,
    min_size: int = 0,
    connectivity: int = LESION_CONNECTIVITY,
) -> dict[str, np.ndarray]:
    """Every requested mask (names from :func:`method_names`) from per-plane probability volumes."""
    out: dict[str, np.ndarray] = {}
    for m in methods:
        clean = m.endswith(CLEAN_SUFFIX)
        base = m[: -len(CLEAN_SUFFIX)] if clean else m
        mask = out[base] if base in out else fuse(probs, base, threshold, weights)
        out[m] = remove_small_components(mask, min_size, connectivity) if clean else mask
    return out


def outline_large(mask: np.ndarray, prob: np.ndarray, spacing: Sequence[float], large_mm3: float,
                  large_threshold: float, fragment_mm3: float = 0.0,
                  connectivity: int = LESION_CONNECTIVITY) -> np.ndarray:
    """uint8 ``mask`` with every lesion of at least ``large_mm3`` redrawn as its voxels with ``prob >=
    large_threshold``, dropping the pieces of a redrawn lesion smaller than ``fragment_mm3`` (module doc).
    ``large_mm3`` 0 (or a ``large_threshold`` that removes nothing) returns ``mask`` unchanged."""
    m = np.asarray(mask) != 0
    if large_mm3 <= 0 or not m.any():
        return m.astype(np.uint8)
    # on the mask's bounding box only: a 1 mm volume has ~7 M voxels, its lesions a few thousand
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(m))
    sub, p = m[box], np.asarray(prob)[box]
    labels, n = label(sub, connectivity)
    large = np.bincount(labels.ravel(), minlength=n + 1) >= min_voxels(large_mm3, spacing)
    large[0] = False
    inside = large[labels]
    redrawn = inside & (p >= large_threshold)
    if fragment_mm3 > 0:
        redrawn = remove_small_lesions(redrawn, fragment_mm3, spacing, connectivity) != 0
    out = m.copy()
    out[box] = (sub & ~inside) | redrawn
    return out.astype(np.uint8)


def postprocess(probs: Mapping[str, np.ndarray], *, fusion: str, threshold: float, min_lesion_mm3: float,
                spacing: Sequence[float], connectivity: int = LESION_CONNECTIVITY,
                weights: Mapping[str, float] | None = None, min_peak: float = 0.0, large_mm3: float = 0.0,
                large_threshold: float = 0.0, large_fragment_mm3: float = 0.0) -> np.ndarray:
    """The final mask of one setting: fuse, threshold, then remove lesions under ``min_lesion_mm3`` and,
    with ``min_peak`` > 0, lesions whose peak probability is below it; with ``large_mm3`` > 0, redraw the
    lesions of at least that volume at ``large_threshold`` (:func:`outline_large`; module doc)."""
    return postprocess_with_probability(
        probs, fusion=fusion, threshold=threshold, min_lesion_mm3=min_lesion_mm3, spacing=spacing,
        connectivity=connectivity, weights=weights, min_peak=min_peak, large_mm3=large_mm3,
        large_threshold=large_threshold, large_fragment_mm3=large_fragment_mm3)[0]


def postprocess_with_probability(
    probs: Mapping[str, np.ndarray], *, fusion: str, threshold: float, min_lesion_mm3: float,
    spacing: Sequence[float], connectivity: int = LESION_CONNECTIVITY, weights: Mapping[str, float] | None = None,
    min_peak: float = 0.0, large_mm3: float = 0.0, large_threshold: float = 0.0, large_fragment_mm3: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`postprocess`'s mask and the fused probability map it was drawn from (computed once)."""
    prob = fused_probability(probs, fusion, weights)
    mask = fuse(probs, fusion, threshold, weights, prob=prob)
    if min_peak <= 0 or not mask.any():
        mask = remove_small_lesions(mask, min_lesion_mm3, spacing, connectivity)
    else:
        labels, n = label(mask, connectivity)
        peaks = component_peaks(labels, n, prob)
        mask = keep_large_components(labels, n, min_voxels(min_lesion_mm3, spacing), peaks, float(min_peak))
    if large_mm3 <= 0 or large_threshold <= threshold or not mask.any():
        return mask, prob
    return outline_large(mask, prob, spacing, large_mm3, large_threshold, large_fragment_mm3, connectivity), prob
