"""Synthetic native-space scans with a known answer, for testing and benchmarking ``predict --register``.

A synthetic subject lives in MNI152NLin2009aSym on the ATLAS grid (:mod:`raxnet.synthetic`). Real scans
do not: they sit wherever the head was in the scanner, on the scanner's grid. :func:`random_transform`
draws a known transform (rigid, plus affine scaling and shear, plus a mild smooth warp),
:func:`native_grid` a grid with another orientation and voxel size (LPS, 1 x 1 x 1.2 mm by default)
that holds the moved field of view, and :func:`resample_to_native` pulls an MNI-space T1 (cubic
B-spline) and its lesion mask (nearest neighbour) onto it: the mask goes through exactly the same
mapping, so it is the ground truth in native space. :func:`resample_to_mni` is the exact inverse.

The mapping is a pull from native world coordinates ``x`` (mm) to MNI world coordinates
``A @ x + u(x)``, with ``A`` the 4x4 affine and ``u`` a smooth displacement (a few low-frequency
sinusoids, at most ``warp_mm`` long). Whole-head scans come from the generator itself
(``raxnet.synthetic`` with ``whole_head``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage


#: Voxel axes of the default native grid point Left, Posterior, Superior (a DICOM/ITK-style LPS grid).
LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class NativeTransform:
    """Native world (mm) -> MNI world (mm): ``x -> affine @ x + displacement(x)``."""

    affine: np.ndarray  # 4x4
    waves: np.ndarray  # (n, 3) wave vectors (rad/mm)
    phases: np.ndarray  # (n,)
    amplitudes: np.ndarray  # (n, 3) mm

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """Displacement (mm) at ``points`` (N, 3) native world mm."""
        out = np.zeros_like(points, dtype=np.float64)
        for k, phase, amp in zip(self.waves, self.phases, self.amplitudes):
            out += np.sin(points @ k + phase)[:, None] * amp[None, :]
        return out

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return points @ self.affine[:3, :3].T + self.affine[:3, 3] + self.displacement(points)

    def inverse(self, points: np.ndarray, iterations: int = 8) -> np.ndarray:
        """MNI world (N, 3) -> native world: fixed-point iteration ``x = A^-1 (y - u(x))`` (the warp is
        smooth and a few mm, so it contracts)."""
        inv = np.linalg.inv(self.affine)
        x = points @ inv[:3, :3].T + inv[:3, 3]
        for _ in range(iterations):
            x = (points - self.displacement(x)) @ inv[:3, :3].T + inv[:3, 3]
        return x


def random_transform(
    rng: np.random.Generator,
    *,
    rotation_deg: float = 12.0,
    shift_mm: float = 12.0,
    scale: float = 0.08,
    shear: float = 0.04,
    warp_mm: float = 2.0,
    n_waves: int = 4,
    wavelength_mm: tuple[float, float] = (80.0, 160.0),
) -> NativeTransform:
    """A random rigid + affine + smooth-warp transform about the MNI origin (the brain's centre).

    Rotations up to ``rotation_deg`` about each axis, shifts up to ``shift_mm``, per-axis scaling within
    ``1 +- scale``, shears up to ``shear``; the warp is ``n_waves`` sinusoids of wavelength in
    ``wavelength_mm`` whose summed amplitude is at most ``warp_mm``.
    """
    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = r @ rot
    zoom = np.diag(rng.uniform(1 - scale, 1 + scale, 3))
    sh = np.eye(3)
    sh[np.triu_indices(3, 1)] = rng.uniform(-shear, shear, 3)
    affine = np.eye(4)
    affine[:3, :3] = rot @ zoom @ sh
    affine[:3, 3] = rng.uniform(-shift_mm, shift_mm, 3)
    directions = rng.normal(size=(n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    waves = directions * (2 * np.pi / rng.uniform(*wavelength_mm, n_waves))[:, None]
    amplitudes = rng.uniform(-1, 1, (n_waves, 3)) * (warp_mm / math.sqrt(3) / n_waves)
    return NativeTransform(affine, waves, rng.uniform(0, 2 * np.pi, n_waves), amplitudes)


def native_grid(
    transform: NativeTransform,
    mni_shape: Sequence[int],
    mni_affine: np.ndarray,
    voxel_mm: Sequence[float] = (1.0, 1.0, 1.2),
    axes: np.ndarray = LPS,
    margin_mm: float = 5.0,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a grid (voxel axes ``axes`` x ``voxel_mm``) holding the whole moved MNI grid."""
    ijk = np.array([[i, j, k] for i in (0, mni_shape[0] - 1) for j in (0, mni_shape[1] - 1) for k in (0, mni_shape[2] - 1)])
    corners_mni = ijk @ mni_affine[:3, :3].T + mni_affine[:3, 3]
    # The inverse of the affine part places the corners; the warp is only a few mm (the margin).
    inv = np.linalg.inv(transform.affine)
    corners = corners_mni @ inv[:3, :3].T + inv[:3, 3]
    lo, hi = corners.min(0) - margin_mm, corners.max(0) + margin_mm
    rot = np.asarray(axes, dtype=float) @ np.diag(voxel_mm)
    # Voxel coordinates of the box corners under this orientation, then the origin at the minimum.
    box = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    vox = box @ np.linalg.inv(rot).T
    shape = tuple(int(math.ceil(v)) + 1 for v in vox.max(0) - vox.min(0))
    affine = np.eye(4)
    affine[:3, :3] = rot
    affine[:3, 3] = rot @ vox.min(0)
    return shape, affine  # type: ignore[return-value]


def _pull(volume: np.ndarray, affine: np.ndarray, shape: Sequence[int], target_affine: np.ndarray, mapping, order: int) -> np.ndarray:
    """``volume`` (grid ``affine``) sampled at ``mapping(world points of the target grid)``; order 0, 1 or 3."""
    out = np.zeros((shape[2], shape[0] * shape[1]), dtype=np.float32)
    inv = np.linalg.inv(affine)
    volume = np.asarray(volume, dtype=np.float32)
    if order > 1:  # B-spline coefficients once, not once per slab
        volume = ndimage.spline_filter(volume, order=order, output=np.float32)
    # Slab by slab along the last axis keeps the coordinate arrays small at 1 mm.
    ij = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1).reshape(-1, 2)
    for k in range(shape[2]):
        vox = np.c_[ij, np.full(len(ij), k)].astype(np.float64)
        src = mapping(vox @ target_affine[:3, :3].T + target_affine[:3, 3])
        out[k] = ndimage.map_coordinates(volume, (src @ inv[:3, :3].T + inv[:3, 3]).T, order=order, mode="constant",
                                         prefilter=False)
    out = out.reshape(shape[2], shape[0], shape[1]).transpose(1, 2, 0)
    return np.clip(out, 0.0, None) if order > 1 else out  # B-spline overshoot below 0 is not signal


def resample_to_native(
    volume: np.ndarray, mni_affine: np.ndarray, transform: NativeTransform, shape: Sequence[int], affine: np.ndarray, order: int
) -> np.ndarray:
    """Pull ``volume`` (on an MNI grid) onto the native grid through ``transform``."""
    return _pull(volume, mni_affine, shape, affine, transform, order)


def resample_to_mni(
    volume: np.ndarray, affine: np.ndarray, transform: NativeTransform, shape: Sequence[int], mni_affine: np.ndarray, order: int
) -> np.ndarray:
    """The inverse: a native-grid ``volume`` pulled onto an MNI grid through the exact inverse transform."""
    return _pull(volume, affine, shape, mni_affine, transform.inverse, order)


def move_off_mni(
    t1: np.ndarray,
    mask: np.ndarray,
    mni_affine: np.ndarray,
    rng: np.random.Generator,
    voxel_mm: Sequence[float] = (1.0, 1.0, 1.2),
    **transform_kw: float,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image, NativeTransform]:
    """An MNI-space T1 and lesion mask moved by a random known transform onto an LPS native grid.

    Returns ``(t1 image float32, mask image uint8, transform)``; the T1 is resampled with a cubic
    B-spline (a scanner samples the anatomy; linear interpolation would blur a 2 mm image by up to half
    a voxel), the mask with nearest neighbour.
    """
    transform = random_transform(rng, **transform_kw)
    shape, affine = native_grid(transform, t1.shape, mni_affine, voxel_mm)
    native_t1 = resample_to_native(t1, mni_affine, transform, shape, affine, order=3)
    native_mask = resample_to_native(np.asarray(mask, np.float32), mni_affine, transform, shape, affine, order=0)
    return native_image(native_t1, affine), native_image(native_mask > 0.5, affine, np.uint8), transform


def native_image(data: np.ndarray, affine: np.ndarray, dtype: type = np.float32) -> nib.Nifti1Image:
    """A NIfTI with scanner-space codes (sform/qform 1) for a native-space volume."""
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img
