"""The three plane models as a small ensemble: where they disagree, and how sure each lesion is.

Each plane model sees the brain through different 2D slices, so where their probabilities differ the
fused mask deserves a second look. Two outputs, both from the per-plane probability volumes:

* :func:`plane_spread` — a voxel map: the standard deviation of the plane probabilities (0 where the planes
  agree; at most 0.471 for three planes, e.g. probabilities 0, 0 and 1). ``raxnet predict
  --save-uncertainty`` writes it as ``<name>_desc-uncertainty.nii.gz``.
* :func:`lesion_confidence` — per lesion of the final mask: ``mean_probability`` (mean of the planes' mean
  probability over its voxels), ``plane_agreement`` (share of its voxels that every plane alone calls lesion,
  ``p >= threshold``), ``planes_detecting`` (how many planes alone call any of its voxels lesion, 0-3) and
  ``mean_spread`` (mean of :func:`plane_spread` over its voxels). Low agreement or few detecting planes =
  check this lesion first.

The mask may be on another grid than the probabilities (``raxnet predict`` resamples a 1 mm scan to the 2 mm
weights and the mask back): each lesion voxel is mapped through the two affines and the probabilities are
interpolated linearly there.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from scipy import ndimage

from raxnet.lesions import components

CONFIDENCE_COLUMNS = ["label", "mean_probability", "plane_agreement", "planes_detecting", "mean_spread"]


def _stack(probs: Mapping[str, np.ndarray]) -> np.ndarray:
    if not probs:
        raise ValueError("no plane probabilities given")
    arrays = [np.asarray(p, dtype=np.float32) for p in probs.values()]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"plane probabilities differ in shape: {[a.shape for a in arrays]}")
    return np.stack(arrays)


def plane_spread(probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Voxel-wise standard deviation (population, ddof=0) of the plane probabilities, float32."""
    return _stack(probs).std(axis=0).astype(np.float32)


def _sample(stack: np.ndarray, voxels: np.ndarray, mask_affine: np.ndarray, prob_affine: np.ndarray) -> np.ndarray:
    """``(n_planes, n_voxels)`` probabilities at the given mask-grid voxels (linear interpolation)."""
    to_prob = np.linalg.inv(prob_affine) @ mask_affine
    if np.allclose(to_prob, np.eye(4), atol=1e-6):
        idx = tuple(voxels.T)
        return stack[(slice(None), *idx)]
    coords = (np.c_[voxels, np.ones(len(voxels))] @ to_prob.T)[:, :3].T
    return np.stack([ndimage.map_coordinates(p, coords, order=1, mode="nearest") for p in stack])


def lesion_confidence(
    mask: np.ndarray,
    probs: Mapping[str, np.ndarray],
    threshold: float,
    *,
    mask_affine: np.ndarray | None = None,
    prob_affine: np.ndarray | None = None,
    connectivity: int = 26,
) -> pd.DataFrame:
    """One row per lesion of ``mask`` (labels as :func:`raxnet.lesions.components`: 1 = largest).

    Columns :data:`CONFIDENCE_COLUMNS` (see the module docstring). ``mask_affine`` / ``prob_affine`` map the
    two grids to world coordinates; both ``None`` means the same grid.
    """
    stack = _stack(probs)
    labels, sizes = components(mask, connectivity)
    if sizes.size == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in CONFIDENCE_COLUMNS})
    eye = np.eye(4)
    m_aff = eye if mask_affine is None else np.asarray(mask_affine, dtype=float)
    p_aff = m_aff if prob_affine is None else np.asarray(prob_affine, dtype=float)
    if prob_affine is None and mask.shape != stack.shape[1:]:
        raise ValueError(f"mask {mask.shape} and probabilities {stack.shape[1:]} differ: give both affines")
    voxels = np.argwhere(labels > 0)
    which = labels[tuple(voxels.T)]
    sampled = _sample(stack, voxels, m_aff, p_aff)  # (planes, n)
    above = sampled >= float(threshold)
    mean_p = sampled.mean(axis=0)
    spread = sampled.std(axis=0)
    all_agree = above.all(axis=0)
    n = sizes.size
    counts = np.bincount(which, minlength=n + 1)[1:].astype(float)

    def per_lesion(values: np.ndarray) -> np.ndarray:
        return np.bincount(which, weights=values.astype(float), minlength=n + 1)[1:] / counts

    detecting = np.zeros(n, dtype=int)
    for plane_above in above:
        detecting += np.bincount(which, weights=plane_above.astype(float), minlength=n + 1)[1:] > 0
    return pd.DataFrame({
        "label": np.arange(1, n + 1),
        "mean_probability": np.round(per_lesion(mean_p), 4),
        "plane_agreement": np.round(per_lesion(all_agree), 4),
        "planes_detecting": detecting,
        "mean_spread": np.round(per_lesion(spread), 4),
    })
