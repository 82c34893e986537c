"""Per-volume intensity normalisation, identical in training (stage 03) and inference.

T1w intensities are arbitrary between scanners and sites, so each volume is scaled by robust
percentiles of its foreground (voxels > 0, i.e. inside the field of view of the registered, defaced
scan): the 0.5th percentile maps to 0 and the 99.5th to 1, then values are clipped to [0, 1.5]
(bright fat/vessels stay distinguishable without letting outliers dominate). Background (<= 0) stays 0.
"""

from __future__ import annotations

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
CLIP_MAX = 1.5


def n4_correct(volume: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
               shrink_factor: int = 4) -> np.ndarray:
    """ANTs N4 bias-field correction of the foreground (voxels > 0; background stays 0), float32.

    Optional before :func:`normalise` (``raxnet predict --bias-correct``): a strong intensity inhomogeneity is
    what most breaks the shipped weights out of their training range (bench/results/shifted_factors_2026-12-05).
    ``spacing`` (mm) sets the physical scale of the smooth field; about 30 s for a 1 mm MNI volume.
    """
    try:
        import ants
    except ImportError:
        from raxnet.errors import ConfigError

        raise ConfigError("--bias-correct needs ANTsPy: pip install --no-deps -r requirements-antspyx.txt") from None
    vol = np.asarray(volume, dtype=np.float32)
    fg = vol > 0
    if not fg.any():
        return np.zeros_like(vol)
    spacing = tuple(float(s) for s in spacing)
    image = ants.from_numpy(vol, spacing=spacing)
    mask = ants.from_numpy(fg.astype(np.float32), spacing=spacing)
    out = ants.n4_bias_field_correction(image, mask=mask, shrink_factor=shrink_factor).numpy()
    return np.where(fg, out, 0.0).astype(np.float32)


def normalise(volume: np.ndarray, stats_mask: np.ndarray | None = None) -> np.ndarray:
    """Return the volume as float32 scaled by its foreground percentiles (see module docstring).

    ``stats_mask`` (boolean, the volume's shape) restricts the voxels the percentiles come from (the
    brain-mask step, :mod:`raxnet.brainmask`); the scaling still applies to every voxel.
    """
    vol = np.asarray(volume, dtype=np.float32)
    fg = vol > 0
    stats = fg if stats_mask is None else fg & stats_mask
    if not stats.any():
        return np.zeros_like(vol)
    lo, hi = np.percentile(vol[stats], [LOW_PERCENTILE, HIGH_PERCENTILE])
    scale = float(hi - lo) if hi > lo else 1.0
    out = (vol - float(lo)) / scale
    np.clip(out, 0.0, CLIP_MAX, out=out)
    out[~fg] = 0.0
    return out
