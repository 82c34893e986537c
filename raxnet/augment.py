"""Seeded 2D domain randomisation for training batches: parameter draw, then deterministic apply.

As in TorchIO and MONAI, augmentation is two steps. :func:`draw` turns the strengths of
:class:`AugmentParams` (the ``[augment]`` section) and a ``numpy.random.Generator`` into an
:class:`AugmentDraw` -- every random value one slice gets, small and recordable (``as_dict``; random
fields are stored as their few control points, noise as a seed). :func:`apply` is then a pure function
of the slice, its mask and the draw, built from small deterministic transforms that are tested on their
own with hand-computed answers:

geometry (image and mask together: linear interpolation for the image, nearest neighbour for the mask)
    :func:`flip_lr` (axial and coronal slices; the sagittal plane has no in-plane left-right axis),
    :func:`warp` = a small affine (rotation, isotropic zoom, shift about the slice centre) plus an
    optional smooth elastic displacement, sampled in one pass;
intensity (foreground only: background 0 -- padding, outside the brain mask -- stays 0)
    :func:`blur` (Gaussian), :func:`lower_resolution` (down- and up-sampling along one axis: thick
    slices), :func:`contrast_curve` (a random monotone intensity curve: tissue-specific contrast),
    :func:`gamma`, :func:`gain_offset`, :func:`bias_field` (smooth multiplicative field; optionally a
    second one scaled over the foreground, :func:`brain_bias_field`), :func:`add_noise` (Gaussian), then the
    result is clipped to the normalised range [0, CLIP_MAX];
lesion look (optional, off by default; between geometry and intensity, as it needs the warped mask)
    :func:`repaint_lesion`: the labelled lesion at a random level, texture and edge.

The intensity part is domain randomisation in the spirit of SynthSeg: contrast, gamma, bias, noise and
resolution vary far more than between real scanners, so the networks learn the lesion, not the
scanner. Gamma, gain and bias change every tissue alike; the contrast curve is what moves grey matter,
white matter, CSF and lesion *relative to each other* (SynthSeg draws each label's intensity at random;
here, with no labels at batch time, a piecewise-linear curve with random slopes per intensity band does
it, keeping the T1 order CSF < GM < WM). Validation sets are never augmented.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from raxnet.intensity import CLIP_MAX
from raxnet.planes import LR_AXIS
from raxnet.random_fields import box_matrices, interp_matrix, interpolate

#: ``[augment]`` section: strengths (each 0 disables that part). Pixel units are the slices' own.
DEFAULTS: dict[str, Any] = {
    "flip_prob": 0.5,  # probability of a left-right flip (axial, coronal)
    "rotate_deg": 10.0,  # rotation drawn uniformly in [-rotate_deg, rotate_deg]
    "scale": 0.1,  # isotropic zoom drawn in [1 - scale, 1 + scale]
    "shift_px": 8.0,  # translation per axis in [-shift_px, shift_px] pixels
    "elastic_prob": 0.3,  # probability of a smooth elastic displacement
    "elastic_px": 2.0,  # its SD in pixels (control points every ~1/4 of the slice)
    "blur_prob": 0.2,  # probability of a Gaussian blur ...
    "blur_px": 1.0,  # ... with SD drawn in [0.25, blur_px] pixels
    "lowres_prob": 0.2,  # probability of a resolution loss along one axis ...
    "lowres_factor": 2.5,  # ... by a factor drawn in [1.25, lowres_factor]
    # off: trained from scratch with curve_prob 0.5 it cost 0.05 fused Dice in domain and gained nothing out of
    # domain (bench/results/contrast_curve_2026-12-05)
    "curve_prob": 0.0,  # probability of a random tissue-contrast curve ...
    "curve_sd": 0.6,  # ... whose per-band log-slopes have this SD (0.6: slopes ~0.55-1.8 within 1 SD)
    "gamma": 0.3,  # log(gamma) drawn in [-gamma, gamma]: gamma 0.74-1.35
    "intensity_scale": 0.1,  # gain a in [1 - s, 1 + s]
    "intensity_shift": 0.05,  # offset b in [-s, s]
    "bias": 0.15,  # SD of the log bias field (0.15: about +-30 % across the slice)
    "noise": 0.05,  # Gaussian noise SD drawn in [0, noise] (normalised units; WM ~0.8)
    # lesion look (off by default): with this probability a slice's lesion is repainted -- see repaint_lesion
    "lesion_prob": 0.0,
    "lesion_texture": 0.08,  # SD of the repainted lesion's texture drawn in [0, lesion_texture] (normalised)
    "lesion_edge_px": 1.5,  # SD of its soft edge (partial volume) drawn in [0, lesion_edge_px] pixels
    # brain-scaled bias field (off by default): SD of the log field *over the slice's foreground* drawn in
    # [0, bias_brain] -- see brain_bias_field. ``bias`` above is the SD of control points spread over the whole
    # slice, so inside the brain it varies far less (bias 0.2: in-brain SD ~0.06 at 2 mm)
    "bias_brain": 0.0,
}

#: Range of the repainted lesion's level (normalised units; after :func:`raxnet.intensity.normalise` CSF,
#: grey and white matter sit near 0.2, 0.55 and 0.75): from darker than CSF to a little above grey matter.
LESION_LEVELS = (0.0, 0.65)
#: Range of the repainting's strength: 1 replaces the lesion's intensities, 0.5 keeps half of their texture.
LESION_MIX = (0.5, 1.0)
#: Correlation length (pixels) of the repainted lesion's texture.
LESION_TEXTURE_PX = 1.5

_ELASTIC_CTRL = 5
_BIAS_CTRL = 4
#: Knots of the contrast curve: bands of 0.25 normalised units (CSF ~0.3, GM ~0.65, WM ~0.85 fall in
#: different bands), the curve pinned at 0 -> 0 and 1 -> 1 so the intensity scale stays put.
CURVE_KNOTS = np.linspace(0.0, CLIP_MAX, 7)


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation strengths (see :data:`DEFAULTS`)."""

    flip_prob: float = DEFAULTS["flip_prob"]
    rotate_deg: float = DEFAULTS["rotate_deg"]
    scale: float = DEFAULTS["scale"]
    shift_px: float = DEFAULTS["shift_px"]
    elastic_prob: float = DEFAULTS["elastic_prob"]
    elastic_px: float = DEFAULTS["elastic_px"]
    blur_prob: float = DEFAULTS["blur_prob"]
    blur_px: float = DEFAULTS["blur_px"]
    lowres_prob: float = DEFAULTS["lowres_prob"]
    lowres_factor: float = DEFAULTS["lowres_factor"]
    curve_prob: float = DEFAULTS["curve_prob"]
    curve_sd: float = DEFAULTS["curve_sd"]
    gamma: float = DEFAULTS["gamma"]
    intensity_scale: float = DEFAULTS["intensity_scale"]
    intensity_shift: float = DEFAULTS["intensity_shift"]
    bias: float = DEFAULTS["bias"]
    noise: float = DEFAULTS["noise"]
    lesion_prob: float = DEFAULTS["lesion_prob"]
    lesion_texture: float = DEFAULTS["lesion_texture"]
    lesion_edge_px: float = DEFAULTS["lesion_edge_px"]
    bias_brain: float = DEFAULTS["bias_brain"]

    @classmethod
    def from_section(cls, values: Mapping[str, Any]) -> "AugmentParams":
        """Pick this class's fields out of a merged config section (other keys ignored)."""
        return cls(**{f.name: float(values[f.name]) for f in fields(cls) if f.name in values})

    @classmethod
    def none(cls) -> "AugmentParams":
        """All strengths 0: :func:`apply` of its draw returns the slice unchanged."""
        return cls(**{f.name: 0.0 for f in fields(cls)})


@dataclass(frozen=True)
class AugmentDraw:
    """Every random value of one slice's augmentation (identity values = that step is off)."""

    flip: bool = False
    angle_deg: float = 0.0
    zoom: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    elastic: tuple[tuple[float, ...], ...] | None = None  # (2 * n * n) control points in pixels
    blur_px: float = 0.0
    lowres_factor: float = 1.0
    lowres_axis: int = 0
    curve: tuple[float, ...] | None = None  # log-slopes of the contrast curve, one per band
    gamma: float = 1.0
    gain: float = 1.0
    offset: float = 0.0
    bias: tuple[float, ...] | None = None  # (n * n) control points of the log bias field
    noise_sd: float = 0.0
    noise_seed: int = 0
    lesion_level: float | None = None  # the repainted lesion's level; None = lesion left as it is
    lesion_mix: float = 1.0
    lesion_texture: float = 0.0
    lesion_edge_px: float = 0.0
    lesion_seed: int = 0
    brain_bias: tuple[float, ...] | None = None  # (SD, mean, n * n control points) of the brain-scaled field

    def as_dict(self) -> dict[str, Any]:
        """Plain values for logs and reports."""
        return asdict(self)


def settings(cfg: Mapping[str, Any]) -> AugmentParams:
    """The ``[augment]`` section of a run configuration as :class:`AugmentParams` (checked)."""
    from raxnet.config import section
    from raxnet.errors import ConfigError

    values = section(cfg, "augment", DEFAULTS)
    for key, value in values.items():
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"[augment] {key} must be a number >= 0, got {value!r}")
    for key in ("flip_prob", "elastic_prob", "blur_prob", "lowres_prob", "curve_prob", "lesion_prob"):
        if values[key] > 1:
            raise ConfigError(f"[augment] {key} is a probability, got {values[key]}")
    if values["lowres_factor"] and values["lowres_factor"] < 1.25:
        raise ConfigError("[augment] lowres_factor must be >= 1.25 (or 0 = off)")
    return AugmentParams.from_section(values)


def draw(rng: np.random.Generator, plane: str, p: AugmentParams) -> AugmentDraw:
    """Draw one slice's :class:`AugmentDraw` from strengths ``p`` (a step with strength 0 is not drawn)."""
    u = rng.uniform
    values: dict[str, Any] = {}
    if LR_AXIS[plane] is not None and p.flip_prob > 0:
        values["flip"] = bool(rng.random() < p.flip_prob)
    if p.rotate_deg > 0:
        values["angle_deg"] = float(u(-p.rotate_deg, p.rotate_deg))
    if p.scale > 0:
        values["zoom"] = float(u(1.0 - p.scale, 1.0 + p.scale))
    if p.shift_px > 0:
        values["shift"] = (float(u(-p.shift_px, p.shift_px)), float(u(-p.shift_px, p.shift_px)))
    if p.elastic_px > 0 and p.elastic_prob > 0 and rng.random() < p.elastic_prob:
        ctrl = rng.standard_normal(2 * _ELASTIC_CTRL * _ELASTIC_CTRL) * p.elastic_px
        values["elastic"] = tuple(float(v) for v in ctrl)
    if p.blur_px > 0 and p.blur_prob > 0 and rng.random() < p.blur_prob:
        values["blur_px"] = float(u(min(0.25, p.blur_px), p.blur_px))
    if p.lowres_factor > 0 and p.lowres_prob > 0 and rng.random() < p.lowres_prob:
        values["lowres_factor"] = float(u(1.25, p.lowres_factor))
        values["lowres_axis"] = int(rng.integers(2))
    if p.gamma > 0:
        values["gamma"] = float(np.exp(u(-p.gamma, p.gamma)))
    if p.intensity_scale > 0:
        values["gain"] = float(u(1.0 - p.intensity_scale, 1.0 + p.intensity_scale))
    if p.intensity_shift > 0:
        values["offset"] = float(u(-p.intensity_shift, p.intensity_shift))
    if p.bias > 0:
        values["bias"] = tuple(float(v) for v in rng.standard_normal(_BIAS_CTRL * _BIAS_CTRL) * p.bias)
    if p.noise > 0:
        values["noise_sd"] = float(u(0.0, p.noise))
        values["noise_seed"] = int(rng.integers(2**31))
    # drawn last, so the other steps' draws are those of a run without the curve
    if p.curve_sd > 0 and p.curve_prob > 0 and rng.random() < p.curve_prob:
        values["curve"] = tuple(float(v) for v in rng.standard_normal(len(CURVE_KNOTS) - 1) * p.curve_sd)
    # last again: a run with lesion_prob 0 draws exactly what it drew before the option existed
    if p.lesion_prob > 0 and rng.random() < p.lesion_prob:
        values["lesion_level"] = float(u(*LESION_LEVELS))
        values["lesion_mix"] = float(u(*LESION_MIX))
        values["lesion_texture"] = float(u(0.0, p.lesion_texture)) if p.lesion_texture > 0 else 0.0
        values["lesion_edge_px"] = float(u(0.0, p.lesion_edge_px)) if p.lesion_edge_px > 0 else 0.0
        values["lesion_seed"] = int(rng.integers(2**31))
    # last as well: bias_brain 0 draws exactly what was drawn before the option existed
    if p.bias_brain > 0:
        sd = float(u(0.0, p.bias_brain))
        values["brain_bias"] = (sd, float(rng.standard_normal()) * sd,
                                *(float(v) for v in rng.standard_normal(_BIAS_CTRL * _BIAS_CTRL)))
    return AugmentDraw(**values)


# --------------------------------------------------------------------------- deterministic transforms


def flip_lr(image: np.ndarray, mask: np.ndarray, plane: str) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an (H, W) slice or a (C, H, W) stack and its mask along the plane's left-right axis
    (unchanged for sagittal slices)."""
    axis = LR_AXIS[plane]
    if axis is None:
        return image, mask
    # counted from the end, so a (C, H, W) stack of slices flips like one (H, W) slice
    return np.flip(image, axis=axis - 2), np.flip(mask, axis=axis - 2)


def smooth_2d(ctrl: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Control points (n, n) interpolated smoothly to ``shape`` (:mod:`raxnet.random_fields` weights)."""
    return interpolate(np.asarray(ctrl, dtype=np.float32),
                       [interp_matrix(s, c) for s, c in zip(shape, ctrl.shape)]).astype(np.float32)


def warp_coords(
    shape: tuple[int, int],
    angle_deg: float = 0.0,
    zoom: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
    displacement: np.ndarray | None = None,
) -> np.ndarray:
    """The (2, H, W) input coordinates each output pixel of :func:`warp` samples."""
    h, w = shape
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) / zoom
    grid = np.indices((h, w), dtype=np.float32)
    rel = grid - (centre + np.asarray(shift, dtype=float))[:, None, None].astype(np.float32)
    coords = np.einsum("ij,jhw->ihw", rot.astype(np.float32), rel) + centre[:, None, None].astype(np.float32)
    if displacement is not None:
        coords += displacement
    return coords


def warp(
    image: np.ndarray,
    mask: np.ndarray,
    angle_deg: float = 0.0,
    zoom: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
    displacement: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``angle_deg``, zoom by ``zoom`` about the slice centre, move by ``shift`` pixels, then
    displace by ``displacement`` ((2, H, W) pixels, optional); zero outside the input.

    Output pixel ``o`` samples the input at ``R(-angle) (o - c - shift) / zoom + c + d(o)``: content moves
    by +shift, grows with zoom > 1.
    """
    coords = warp_coords(image.shape, angle_deg, zoom, shift, displacement)
    out_img = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    out_msk = ndimage.map_coordinates(mask, coords, order=0, mode="constant", cval=0.0)
    return out_img.astype(np.float32), out_msk.astype(np.float32)


def blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with SD ``sigma_px`` pixels."""
    return ndimage.gaussian_filter(image, sigma_px, mode="nearest").astype(np.float32)


def lower_resolution(image: np.ndarray, factor: float, axis: int) -> np.ndarray:
    """Resolution loss along ``axis``: block-average to ``1/factor`` of the pixels, then linear back up."""
    n = image.shape[axis]
    m = max(1, int(round(n / factor)))
    edges = np.linspace(0, n, m + 1)
    idx = np.minimum(np.floor(np.arange(n) * m / n).astype(int), m - 1)
    counts = np.bincount(idx, minlength=m).astype(np.float32)
    moved = np.moveaxis(image, axis, 0)
    low = np.zeros((m,) + moved.shape[1:], dtype=np.float32)
    np.add.at(low, idx, moved)
    low /= counts.reshape((m,) + (1,) * (moved.ndim - 1))
    centres_low = (edges[:-1] + edges[1:]) / 2.0 - 0.5
    pos = np.interp(np.arange(n), centres_low, np.arange(m))
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, m - 1)
    frac = (pos - lo).astype(np.float32).reshape((n,) + (1,) * (moved.ndim - 1))
    up = low[lo] * (1.0 - frac) + low[hi] * frac
    return np.moveaxis(up, 0, axis).astype(np.float32)


def curve_values(log_slopes: np.ndarray) -> np.ndarray:
    """The contrast curve's values at :data:`CURVE_KNOTS`: slopes ``exp(log_slopes)`` per band, then
    scaled so that the curve maps 0 to 0 and 1 to 1 (monotone increasing)."""
    steps = np.exp(np.asarray(log_slopes, dtype=float)) * np.diff(CURVE_KNOTS)
    y = np.concatenate([[0.0], np.cumsum(steps)])
    return y / np.interp(1.0, CURVE_KNOTS, y)


def contrast_curve(image: np.ndarray, log_slopes: np.ndarray) -> np.ndarray:
    """Map intensities in [0, CLIP_MAX] through the piecewise-linear curve of :func:`curve_values`: a
    tissue-specific contrast change, e.g. grey and white matter closer together."""
    return np.interp(image, CURVE_KNOTS, curve_values(log_slopes)).astype(np.float32)


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    """``x ** g`` (non-negative intensities)."""
    return np.power(np.maximum(image, 0.0), g, dtype=np.float32)


def gain_offset(image: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """``x * gain + offset``."""
    return (image * np.float32(gain) + np.float32(offset)).astype(np.float32)


def brain_bias_field(foreground: np.ndarray, ctrl: np.ndarray, sd: float, mean: float = 0.0) -> np.ndarray:
    """Log bias field of an (H, W) slice whose (n, n) control points span the foreground's bounding box,
    rescaled to mean ``mean`` and SD ``sd`` over the foreground.

    The generator's 3D field is defined over the brain's box, so a slice of it varies as much inside the brain
    as its SD says; a field spread over the whole slice (:func:`smooth_2d`) is nearly flat over the brain in
    the middle. Scaling on the foreground makes ``sd`` the variation the networks actually see."""
    fg = np.asarray(foreground, dtype=bool)
    ctrl = np.asarray(ctrl, dtype=np.float32)
    if not fg.any():
        return np.zeros(fg.shape, np.float32)
    idx = np.nonzero(fg)
    lo = [int(i.min()) for i in idx]
    box = [int(i.max()) - l + 1 for i, l in zip(idx, lo)]
    field = interpolate(ctrl, box_matrices(fg.shape, ctrl.shape, lo, box))
    inside = field[fg]
    spread = float(inside.std())
    # float32 rounding leaves a flat field a spread of ~1e-8; it must stay flat, not be blown up to sd
    field = (field - float(inside.mean())) * (sd / spread if spread > 1e-6 else 0.0) + mean
    return field.astype(np.float32)


def bias_field(image: np.ndarray, log_field: np.ndarray) -> np.ndarray:
    """Multiplicative field: ``x * exp(log_field)``."""
    return (image * np.exp(log_field)).astype(np.float32)


def add_noise(image: np.ndarray, sd: float, seed: int) -> np.ndarray:
    """Add Gaussian noise of SD ``sd`` from ``seed`` (the same seed gives the same noise)."""
    noise = np.random.default_rng(seed).standard_normal(image.shape, dtype=np.float32)
    return (image + np.float32(sd) * noise).astype(np.float32)


def repaint_lesion(images: np.ndarray, mask: np.ndarray, level: float, mix: float = 1.0, texture: float = 0.0,
                   edge_px: float = 0.0, seed: int = 0) -> np.ndarray:
    """Repaint the lesion of a (C, H, W) stack: ``(1 - w) * image + w * (level + texture field)`` with
    ``w = mix x`` the mask softened by a Gaussian of SD ``edge_px``, on the foreground only.

    Domain randomisation of the lesion's own look, as SynthStroke paints lesions with random intensities:
    the networks see lesions darker than CSF, near grey matter, smooth or mottled, sharp or soft-edged, so
    they learn the lesion's shape and place rather than one generator's lesion intensity. The texture is
    Gaussian noise smoothed over :data:`LESION_TEXTURE_PX` pixels, scaled to SD ``texture``, from ``seed``.
    Every channel gets the same repainting (the centre slice's mask: neighbouring slices of a 2.5D input
    mostly share the lesion)."""
    imgs = np.asarray(images, dtype=np.float32)
    w = np.asarray(mask, dtype=np.float32)
    if edge_px > 0:
        w = np.maximum(w, ndimage.gaussian_filter(w, edge_px))  # soft outside the border, solid inside
    w = np.float32(mix) * np.clip(w, 0.0, 1.0)
    paint = np.full(w.shape, level, dtype=np.float32)
    if texture > 0:
        field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(w.shape, dtype=np.float32),
                                        LESION_TEXTURE_PX)
        paint += np.float32(texture) * field / max(float(field.std()), 1e-6)
    out = (1.0 - w) * imgs + w * paint
    out = np.where(imgs > 0, np.clip(out, 0.0, CLIP_MAX), 0.0)  # background (padding, outside the brain) stays 0
    return out.astype(np.float32)


def _repaint(imgs: np.ndarray, msk: np.ndarray, d: AugmentDraw) -> np.ndarray:
    if d.lesion_level is None or not msk.any():
        return imgs
    return repaint_lesion(imgs, msk, d.lesion_level, d.lesion_mix, d.lesion_texture, d.lesion_edge_px,
                          d.lesion_seed)


def geometry(images: np.ndarray, mask: np.ndarray, d: AugmentDraw, plane: str) -> tuple[np.ndarray, np.ndarray]:
    """The draw's flip, affine and elastic warp of a stack ``(C, H, W)`` of slices and their (H, W) mask:
    one set of sampling coordinates for every channel, as the slices of one scan move together."""
    imgs = np.asarray(images, dtype=np.float32)
    msk = np.asarray(mask, dtype=np.float32)
    if d.flip:
        imgs, msk = flip_lr(imgs, msk, plane)
    disp = None
    if d.elastic is not None:
        ctrl = np.asarray(d.elastic, dtype=np.float32).reshape(2, _ELASTIC_CTRL, _ELASTIC_CTRL)
        disp = np.stack([smooth_2d(c, msk.shape) for c in ctrl])
    if not (d.angle_deg or d.zoom != 1.0 or any(d.shift) or disp is not None):
        return imgs, msk
    coords = warp_coords(msk.shape, d.angle_deg, d.zoom, d.shift, disp)
    out = np.empty(imgs.shape, dtype=np.float32)
    for c in range(imgs.shape[0]):
        out[c] = ndimage.map_coordinates(imgs[c], coords, order=1, mode="constant", cval=0.0)
    return out, ndimage.map_coordinates(msk, coords, order=0, mode="constant", cval=0.0).astype(np.float32)


def intensity(image: np.ndarray, d: AugmentDraw) -> np.ndarray:
    """The draw's intensity change of one (H, W) slice (blur, resolution loss, contrast curve, gamma,
    gain/offset, bias field, noise), clipped to [0, CLIP_MAX]; the background (zero) stays zero."""
    img = np.asarray(image, dtype=np.float32)
    fg = img > 0
    if not fg.any():
        return np.ascontiguousarray(img)
    out = img
    if d.blur_px > 0:
        out = blur(out, d.blur_px)
    if d.lowres_factor > 1.0:
        out = lower_resolution(out, d.lowres_factor, d.lowres_axis)
    if d.curve is not None:
        out = contrast_curve(out, np.asarray(d.curve))
    if d.gamma != 1.0:
        out = gamma(out, d.gamma)
    if d.gain != 1.0 or d.offset != 0.0:
        out = gain_offset(out, d.gain, d.offset)
    if d.bias is not None:
        out = bias_field(out, smooth_2d(np.asarray(d.bias).reshape(_BIAS_CTRL, _BIAS_CTRL), out.shape))
    if d.brain_bias is not None:
        sd, mean, *ctrl = d.brain_bias
        out = bias_field(out, brain_bias_field(fg, np.reshape(ctrl, (_BIAS_CTRL, _BIAS_CTRL)), sd, mean))
    if d.noise_sd > 0:
        out = add_noise(out, d.noise_sd, d.noise_seed)
    out = np.clip(out, 0.0, CLIP_MAX)
    out[~fg] = 0.0
    return np.ascontiguousarray(out, dtype=np.float32)


def apply(image: np.ndarray, mask: np.ndarray, d: AugmentDraw, plane: str) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic augmentation of one (H, W) slice and its mask by draw ``d``; new float32 arrays."""
    imgs, msk = geometry(np.asarray(image, dtype=np.float32)[None], mask, d, plane)
    imgs = _repaint(imgs, msk, d)
    return intensity(imgs[0], d), np.ascontiguousarray(msk, dtype=np.float32)


def apply_channels(image: np.ndarray, mask: np.ndarray, d: AugmentDraw, plane: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`apply` to a 2.5D input ``(C, H, W)`` (neighbour slices, centre in the middle) and the centre
    slice's mask: every channel gets the same geometry (warped once, :func:`geometry`) and intensity change,
    as neighbouring slices of one scan would; the noise is drawn anew per channel (seed shifted by the
    channel's offset from the centre, so the centre slice is augmented exactly as a 2D input is)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[0] % 2 == 0:
        raise ValueError(f"expected (C, H, W) with an odd C, got {img.shape}")
    centre = img.shape[0] // 2
    imgs, msk = geometry(img, mask, d, plane)
    imgs = _repaint(imgs, msk, d)
    out = np.empty_like(img)
    for c in range(img.shape[0]):
        dc = d if c == centre or d.noise_sd <= 0 else replace(d, noise_seed=(d.noise_seed + c - centre) % 2**31)
        out[c] = intensity(imgs[c], dc)
    return out, np.ascontiguousarray(msk, dtype=np.float32)


def augment_pair(image: np.ndarray, mask: np.ndarray, plane: str, params: AugmentParams,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw, then apply: one augmented (H, W) image and its mask (float32)."""
    return apply(image, mask, draw(rng, plane, params), plane)
