"""Seeded 2D data augmentation for training batches (numpy/scipy only; off by default).

Each augmentation acts on a padded slice and its mask together:

* left-right flip (axial and coronal planes only: the sagittal plane has no in-plane left-right axis);
* a small affine (rotation, isotropic scale, shift) about the slice centre -- linear interpolation for
  the image, nearest neighbour for the mask so it stays binary;
* intensity jitter on the foreground: ``x * a + b`` and a smooth multiplicative bias field
  (``1 + sum of low-order polynomial terms``), mimicking scanner gain and residual inhomogeneity.

Background (0) stays 0, so zero padding and the outside of the head are untouched. Randomness comes
only from the ``numpy.random.Generator`` passed in, so the same seed gives the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from raxnet.intensity import CLIP_MAX
from raxnet.planes import LR_AXIS


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation strengths (each 0 disables that part)."""

    flip_prob: float = 0.5  # probability of a left-right flip
    rotate_deg: float = 10.0  # rotation drawn uniformly in [-rotate_deg, rotate_deg]
    scale: float = 0.1  # isotropic zoom drawn in [1 - scale, 1 + scale]
    shift_px: float = 8.0  # translation per axis in [-shift_px, shift_px] pixels
    intensity_scale: float = 0.1  # gain a in [1 - s, 1 + s]
    intensity_shift: float = 0.05  # offset b in [-s, s]
    bias: float = 0.1  # max amplitude of each bias-field polynomial term

    @classmethod
    def from_section(cls, values: Mapping[str, Any]) -> "AugmentParams":
        """Pick this class's fields out of a merged config section (other keys ignored)."""
        return cls(**{f.name: float(values[f.name]) for f in fields(cls) if f.name in values})


def augment_pair(image: np.ndarray, mask: np.ndarray, plane: str, params: AugmentParams,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Augment one (H, W) image and its (H, W) mask; returns new float32 arrays."""
    img = np.asarray(image, dtype=np.float32)
    msk = np.asarray(mask, dtype=np.float32)
    lr = LR_AXIS[plane]
    if lr is not None and params.flip_prob > 0 and rng.random() < params.flip_prob:
        img, msk = np.flip(img, axis=lr), np.flip(msk, axis=lr)
    if params.rotate_deg > 0 or params.scale > 0 or params.shift_px > 0:
        img, msk = _affine(img, msk, params, rng)
    if params.intensity_scale > 0 or params.intensity_shift > 0 or params.bias > 0:
        img = _intensity(img, params, rng)
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(msk, dtype=np.float32)


def _affine(img: np.ndarray, msk: np.ndarray, p: AugmentParams, rng: np.random.Generator):
    theta = np.deg2rad(rng.uniform(-p.rotate_deg, p.rotate_deg))
    zoom = rng.uniform(1.0 - p.scale, 1.0 + p.scale)
    shift = rng.uniform(-p.shift_px, p.shift_px, size=2)
    # affine_transform maps output coords to input coords: input = M @ out + offset.
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    matrix = rot / zoom
    centre = (np.asarray(img.shape, dtype=float) - 1.0) / 2.0
    offset = centre - matrix @ (centre + shift)
    out_img = ndimage.affine_transform(img, matrix, offset=offset, order=1, mode="constant", cval=0.0)
    out_msk = ndimage.affine_transform(msk, matrix, offset=offset, order=0, mode="constant", cval=0.0)
    return out_img, out_msk


def _intensity(img: np.ndarray, p: AugmentParams, rng: np.random.Generator) -> np.ndarray:
    fg = img > 0
    gain = rng.uniform(1.0 - p.intensity_scale, 1.0 + p.intensity_scale)
    off = rng.uniform(-p.intensity_shift, p.intensity_shift)
    h, w = img.shape
    u = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    v = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    c = rng.uniform(-p.bias, p.bias, size=5).astype(np.float32)
    field = 1.0 + c[0] * u + c[1] * v + c[2] * u * v + c[3] * (u * u - 1 / 3) + c[4] * (v * v - 1 / 3)
    out = (img * gain + off) * field
    np.clip(out, 0.0, CLIP_MAX, out=out)
    out[~fg] = 0.0
    return out.astype(np.float32)
