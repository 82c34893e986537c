"""Smooth random fields in 2D or 3D: the generator's anatomy warp, bias fields and textures, and the
augmentation's bias fields and elastic displacements.

A field is a few N(0, 1) control points per axis interpolated to the grid with row-normalised Gaussian
weights, one small matrix per axis (separable, so a 3D field costs three matrix products, far less than
filtering a full-size noise volume).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage


def interp_matrix(n_out: int, n_ctrl: int, pos: np.ndarray | None = None) -> np.ndarray:
    """(n_out, n_ctrl) row-normalised Gaussian weights (SD 0.6 control spacings).

    ``pos`` holds the output points in control-point units; by default ``n_out`` points spread evenly
    from the first to the last control point.
    """
    if pos is None:
        pos = np.linspace(0.0, n_ctrl - 1.0, n_out)
    d = np.asarray(pos, dtype=float)[:, None] - np.arange(n_ctrl)[None, :]
    w = np.exp(-0.5 * (d / 0.6) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def box_matrices(full: Sequence[int], n_ctrl: Sequence[int], lo: Sequence[int], box: Sequence[int]) -> list[np.ndarray]:
    """One :func:`interp_matrix` per axis onto the grid ``full`` whose control points span the box of size
    ``box`` at offset ``lo`` (first point on the box's first voxel, last on its last); past the box the
    weights continue and level off."""
    return [interp_matrix(n, c, (np.arange(n) - l) * (c - 1.0) / max(b - 1.0, 1.0))
            for n, c, l, b in zip(full, n_ctrl, lo, box)]


def interpolate(ctrl: np.ndarray, mats: Sequence[np.ndarray]) -> np.ndarray:
    """Apply one interpolation matrix per axis of ``ctrl`` (any number of axes)."""
    letters = "abcdef"[: ctrl.ndim]
    outs = "ijklmn"[: ctrl.ndim]
    spec = letters + "," + ",".join(o + c for o, c in zip(outs, letters)) + "->" + outs
    return np.einsum(spec, ctrl, *mats, optimize=True)


def smooth_field(
    rng: np.random.Generator,
    shape: Sequence[int],
    n_ctrl: Sequence[int],
    extend: tuple[Sequence[int], Sequence[int]] | None = None,
) -> np.ndarray:
    """Smooth random float32 field on ``shape`` from N(0, 1) control points, rescaled to unit SD.

    With ``extend = (lo, full_shape)`` the same field (``shape`` being a box at offset ``lo``) is
    returned on the whole grid ``full_shape``: the weights continue past the box and level off, the box
    part equals the box field exactly and the SD is the box's.
    """
    ctrl = rng.standard_normal(tuple(n_ctrl)).astype(np.float32)
    out = interpolate(ctrl, [interp_matrix(s, c) for s, c in zip(shape, n_ctrl)])
    sd = float(out.std())
    sd = sd if sd > 0 else 1.0
    if extend is None:
        return (out / sd).astype(np.float32)
    lo, full = extend
    whole = interpolate(ctrl, box_matrices(full, n_ctrl, lo, shape))
    whole[tuple(slice(int(l), int(l) + int(b)) for l, b in zip(lo, shape))] = out
    return (whole / sd).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: float) -> np.ndarray:
    """Gaussian-smoothed white noise with correlation ~``sigma_vox`` voxels and unit SD (any number of
    axes; filtered on a coarser grid and zoomed back when ``sigma_vox`` >= 4, which is much cheaper)."""
    step = max(1, int(sigma_vox // 2))
    coarse = tuple(int(math.ceil(s / step)) + 1 for s in shape)
    noise = rng.standard_normal(coarse).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=max(sigma_vox / step, 0.5), mode="wrap")
    if step > 1:
        noise = ndimage.zoom(noise, step, order=1, mode="nearest")
    noise = noise[tuple(slice(0, s) for s in shape)]
    sd = float(noise.std())
    return noise / sd if sd > 0 else noise
