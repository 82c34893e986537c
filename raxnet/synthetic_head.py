"""Whole-head anatomy around a synthetic brain: CSF rim, skull, scalp, neck, defacing cut, air.

Real ATLAS v2.0 T1w scans are defaced whole-head images, while the MNI152 template the generator warps
is skull-stripped. :func:`build_head` wraps a subject's (warped) brain in a head built from the brain
mask alone, with distance transforms (``scipy.ndimage``), randomised per subject:

* **envelope**: the brain mask closed with a ball of 6-10 mm (fills sulci and the interhemispheric
  fissure), extruded downwards below z ~ -35 mm as a slowly narrowing neck;
* **CSF rim** (1.5-4.5 mm, CSF-dark), then the **skull**: inner table (dark cortical bone), diploe
  (bright fatty marrow, 1-5 mm, textured) and outer table, all measured outwards from the envelope and
  scaled by a smooth random thickness field (+-25 %);
* **scalp**: galea/muscle (with a temporalis bulge over the temples), bright subcutaneous fat, skin;
  below the brain the neck is muscle-like soft tissue;
* **defacing**: everything in front of and below a tilted plane (30-55 deg from the horizontal) that
  clears the brain by 5-15 mm is exactly 0, as after pydeface / mri_deface (ears are not modelled);
* **air**: signal 0, so the generator's Rician noise gives a non-zero noise floor around the head.

Distance maps are computed on a 4 mm grid and upsampled linearly (distance fields are smooth; the
brain/CSF border itself comes from the full-resolution brain mask), which keeps the head cheap.
Intensities are in template units (CSF ~0.31, GM ~0.66, WM ~0.84), before the scanner model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from raxnet.random_fields import smooth_field

CSF_LEVEL = 0.31
COARSE_MM = 4.0  # grid spacing of the distance maps


@dataclass(frozen=True)
class HeadParams:
    """One subject's drawn head: thicknesses (mm), intensities (template units), geometry."""

    closing_mm: float
    csf_mm: float
    inner_table_mm: float
    diploe_mm: float
    outer_table_mm: float
    galea_mm: float
    temporalis_mm: float
    fat_mm: float
    skin_mm: float
    csf: float
    bone: float
    marrow: float
    muscle: float
    fat: float
    skin: float
    sinus: float
    neck_z_mm: float
    neck_taper: float
    deface_deg: float
    deface_margin_mm: float


def draw_head(rng: np.random.Generator) -> HeadParams:
    """Draw one subject's head parameters (ranges in the module docstring)."""
    u = rng.uniform
    return HeadParams(
        closing_mm=u(8.0, 14.0),
        csf_mm=u(1.0, 3.5),
        inner_table_mm=u(0.8, 1.8),
        diploe_mm=u(1.0, 5.0),
        outer_table_mm=u(0.8, 1.8),
        galea_mm=u(0.5, 2.0),
        temporalis_mm=u(4.0, 12.0),
        fat_mm=u(2.5, 6.0),
        skin_mm=u(1.0, 2.5),
        csf=CSF_LEVEL * u(0.7, 1.0),
        bone=u(0.03, 0.12),
        marrow=u(0.35, 0.8),
        muscle=u(0.3, 0.5),
        fat=u(0.85, 1.2),
        skin=u(0.4, 0.65),
        sinus=u(0.0, 1.0),
        neck_z_mm=u(-40.0, -30.0),
        neck_taper=u(0.15, 0.35),
        deface_deg=u(30.0, 55.0),
        deface_margin_mm=u(5.0, 15.0),
    )


def _downsample(mask: np.ndarray, f: int) -> np.ndarray:
    """Boolean f x f x f block majority (edges padded with False)."""
    pad = [(0, -s % f) for s in mask.shape]
    m = np.pad(mask, pad).astype(np.float32)
    s = [d // f for d in m.shape]
    return m.reshape(s[0], f, s[1], f, s[2], f).mean(axis=(1, 3, 5)) >= 0.5


def upsample2(coarse: np.ndarray) -> np.ndarray:
    """Linear 2x upsampling of a block-aligned grid (fine voxel 2k + j sits at coarse k + (2j - 1) / 4);
    equals ``ndimage.zoom(coarse, 2, order=1, grid_mode=True, mode="nearest")``, several times faster."""
    out = np.asarray(coarse, dtype=np.float32)
    for axis in range(out.ndim):
        n = out.shape[axis]
        prev = np.take(out, np.r_[0, np.arange(n - 1)], axis=axis)
        nxt = np.take(out, np.r_[np.arange(1, n), n - 1], axis=axis)
        pair = np.stack([0.75 * out + 0.25 * prev, 0.75 * out + 0.25 * nxt], axis=axis + 1)
        out = pair.reshape(out.shape[:axis] + (2 * n,) + out.shape[axis + 1 :])
    return out


def _upsample(coarse: np.ndarray, f: int, shape: Sequence[int]) -> np.ndarray:
    """Upsample a block-aligned grid by ``f`` (a power of 2) and crop it to ``shape``."""
    out = coarse
    while f > 1:
        out, f = upsample2(out), f // 2
    return np.ascontiguousarray(out[tuple(slice(0, s) for s in shape)])


def _profile(x: np.ndarray, edges: Sequence[float], values: Sequence[float], soft: float) -> np.ndarray:
    """Piecewise-constant ``values[k]`` between ``edges[k-1]`` and ``edges[k]`` with linear transitions
    of width ``soft`` centred on each edge (a partial-volume blend)."""
    xs, ys = [], []
    for k, e in enumerate(edges):
        xs += [e - soft / 2, e + soft / 2]
        ys += [values[k], values[k + 1]]
    return np.interp(x, xs, ys).astype(np.float32)


def _centres_mm(affine: np.ndarray, n: int, axis: int) -> np.ndarray:
    """mm coordinates of the coarse (2x) voxel centres along ``axis``."""
    return (affine[axis, axis] * (2 * np.arange(n) + 0.5) + affine[axis, 3]).astype(np.float32)


def build_head(
    brain: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    params: HeadParams | None = None,
    field_sd: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, HeadParams]:
    """Head intensities around ``brain`` (full-grid boolean brain mask on the diagonal ``affine``).

    Returns ``(head, inside, params)``: ``head`` float32 template-unit intensities (0 in air and inside
    the brain, where the caller puts the brain image), ``inside`` the field of view the defacing cut
    keeps (False = exactly 0 in the final scan), and the drawn parameters. ``field_sd`` scales the
    smooth thickness variations (0: every layer has exactly its drawn thickness).
    """
    p = draw_head(rng) if params is None else params
    shape = brain.shape
    f = max(1, int(round(COARSE_MM / float(affine[0, 0]))))
    cs = f * float(affine[0, 0])  # coarse spacing (mm)
    coarse = _downsample(brain, f)
    cshape = coarse.shape
    x_mm, y_mm, z_mm = (
        (affine[a, a] * (f * np.arange(cshape[a]) + (f - 1) / 2.0) + affine[a, 3]).astype(np.float32)
        for a in range(3)
    )
    # Envelope: the brain closed by distance thresholds (dilate by R, erode by R).
    dil = ndimage.distance_transform_edt(~coarse) * cs <= p.closing_mm
    env = (ndimage.distance_transform_edt(dil) * cs > p.closing_mm) | coarse
    # Neck: below neck_z the envelope's cross-section there is extruded downwards, narrowing with depth.
    k_ref = int(np.clip(np.searchsorted(z_mm, p.neck_z_mm), 0, cshape[2] - 1))
    ext = env.copy()
    if env[:, :, k_ref].any():
        depth = ndimage.distance_transform_edt(env[:, :, k_ref]) * cs
        for k in range(k_ref):
            ext[:, :, k] |= depth > (z_mm[k_ref] - z_mm[k]) * p.neck_taper
    # Outward distances from voxel centres, minus half a voxel: the border lies half-way between an
    # inside and an outside centre (inside stays at -cs/2: CSF; only the outside matters).
    d_env = (ndimage.distance_transform_edt(~env) * cs - cs / 2).astype(np.float32)
    # The skin is smoother than the skull: blur the distance map (rounds the concave creases).
    d_ext = ndimage.gaussian_filter(ndimage.distance_transform_edt(~ext) * cs - cs / 2, 6.0 / cs).astype(np.float32)

    n_ctrl = [4, 5, 4]
    def scale(sd: float) -> np.ndarray:
        return np.exp(sd * field_sd * np.clip(smooth_field(rng, cshape, n_ctrl), -2.5, 2.5))

    skull_scale, diploe, scalp_scale = scale(0.2), p.diploe_mm * scale(0.45), scale(0.3)
    temple = (
        np.clip((np.abs(x_mm) - 35.0) / 20.0, 0.0, 1.0)[:, None, None]
        * np.exp(-0.5 * ((y_mm + 10.0) / 30.0) ** 2)[None, :, None]
        * np.exp(-0.5 * ((z_mm - 10.0) / 25.0) ** 2)[None, None, :]
    ).astype(np.float32)
    t1 = p.csf_mm
    t2 = t1 + p.inner_table_mm
    t3 = t2 + p.diploe_mm
    skull_end = t3 + p.outer_table_mm
    # Skull coordinate u: piecewise-linear in the distance so that the layer edges sit at the mean
    # thicknesses (CSF, inner and outer table scaled by skull_scale, the diploe by its own field).
    inner = t2 * skull_scale
    u = np.where(
        d_env < inner,
        d_env / skull_scale,
        t2 + np.minimum((d_env - inner) / diploe, 1.0) * p.diploe_mm
        + np.maximum(d_env - inner - diploe, 0.0) / skull_scale,
    )
    thickness = (
        (t2 + p.outer_table_mm) * skull_scale + diploe
        + p.galea_mm * scalp_scale + p.temporalis_mm * temple
        + (p.fat_mm + p.skin_mm) * scalp_scale
    )
    u = _upsample(u, f, shape)
    w = _upsample((d_ext - thickness) / scalp_scale, f, shape)  # scalp coordinate: 0 = skin surface
    # Texture: white noise on the coarse grid, upsampled: blobs of a few mm.
    tex = _upsample(rng.standard_normal(cshape).astype(np.float32), f, shape)

    head = np.zeros(shape, dtype=np.float32)
    in_skull = (u < skull_end) & ~brain
    head[in_skull] = _profile(u[in_skull], [t1, t2, t3, skull_end], [p.csf, p.bone, p.marrow, p.bone, p.muscle], 0.8)
    in_scalp = (u >= skull_end) & (w < 0.4)
    head[in_scalp] = _profile(
        w[in_scalp], [-(p.fat_mm + p.skin_mm), -p.skin_mm, 0.0], [p.muscle, p.fat, p.skin, 0.0], 0.8
    )
    diploe_vox = in_skull & (u > t2) & (u < t3)
    head[diploe_vox] *= 1.0 + 0.2 * tex[diploe_vox]  # fatty islands of the marrow
    deep = in_scalp & (w <= -(p.fat_mm + p.skin_mm))
    head[deep] *= 1.0 + 0.12 * tex[deep]  # muscle / neck soft tissue with fascia and fat streaks

    # Air cells in the bone behind the forehead (frontal sinus) and behind the ears (mastoid).
    x = (affine[0, 0] * np.arange(shape[0]) + affine[0, 3]).astype(np.float32)
    y = (affine[1, 1] * np.arange(shape[1]) + affine[1, 3]).astype(np.float32)
    z = (affine[2, 2] * np.arange(shape[2]) + affine[2, 3]).astype(np.float32)
    frontal = (np.abs(x) < 25)[:, None, None] & (y > 40)[None, :, None] & ((z > -15) & (z < 25))[None, None, :]
    mastoid = (np.abs(x) > 35)[:, None, None] & ((y > -45) & (y < -5))[None, :, None] & (z < -25)[None, None, :]
    air = (frontal | mastoid) & in_skull & (u > t2) & (tex > 1.0 - p.sinus)
    head[air] = p.bone * 0.5

    # Defacing: zero everything anterior-inferior of a tilted plane that clears the brain.
    theta = math.radians(p.deface_deg)
    proj = (math.cos(theta) * y)[:, None] - (math.sin(theta) * z)[None, :]  # (Y, Z), mm along the normal
    brain_yz = brain.any(axis=0)
    limit = float(proj[brain_yz].max()) + p.deface_margin_mm if brain_yz.any() else np.inf
    inside = np.broadcast_to((proj <= limit)[None, :, :], shape).copy()
    head[~inside] = 0.0
    return np.maximum(head, 0.0), inside, p
