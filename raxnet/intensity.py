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


#: Voxel size (mm) of the grid N4 fits its field on: the volume is shrunk by the integer factor nearest to
#: this (4 on the 2 mm model grid). An inhomogeneity varies over centimetres; at 8 mm a 2 mm volume takes
#: ~2 s on one core (~17 s at 4 mm), its field within 2 % of the 4 mm one.
N4_GRID_MM = 8.0


def n4_correct(volume: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
               shrink_factor: int | None = None) -> np.ndarray:
    """ANTs N4 bias-field correction of the foreground (voxels > 0; background stays 0), float32.

    The optional bias-correction step of :func:`raxnet.brainmask.prepare` (``[convert] bias_correct`` in
    stage 03, recorded in ``weights.json``, so ``raxnet predict`` does what training did): a strong intensity
    inhomogeneity is what most breaks the networks outside their training range
    (bench/results/shifted_factors_2026-12-05). ``spacing`` (mm) sets the field's physical scale;
    ``shrink_factor`` defaults to the one that makes the fitting grid :data:`N4_GRID_MM`.
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
    if shrink_factor is None:
        shrink_factor = max(1, round(N4_GRID_MM / min(spacing)))
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
