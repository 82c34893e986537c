"""ATLAS v2.0-shaped synthetic dataset: the project's embedded default data (stage 01).

Every subject is the MNI152 2009a symmetric template (``raxnet.templates``; shipped inside nilearn's
wheel, nothing downloaded) made into an individual and given chronic-stroke-like lesions:

Anatomy
    A smooth random displacement field (random control points every ~25 mm, SD ``deform_mm``, Gaussian
    interpolation to the grid) plus a small per-axis scaling (+-3 %) warps the T1, grey/white-matter
    probability and brain-mask templates together (trilinear, float32), so lesion
    placement follows the subject's own anatomy. Work happens in the brain's bounding box only.

Lesions
    Count and per-subject total volume follow the real ATLAS v2.0 distribution through an embedded
    parametric model (never the reference table): the total volume (mm^3) is drawn from a piecewise
    log-linear quantile function through the real 0/5/10/25/50/75/90/95/100 % points (13 ... 496,656 mm^3,
    median 5,290), the count from the real categorical frequencies (47 % one component, 21 % two,
    12 % three, ... up to 33). The largest lesion takes a Beta(1.4, 0.45) share (>= 0.3) of the total,
    as in the real multi-lesion subjects; the rest is split at random among the others.
    Each lesion grows from a centre voxel as the largest 26-connected component of a randomly rotated,
    anisotropic ellipsoid perturbed by smooth noise (irregular, not a sphere), thresholded to the
    requested voxel count and intersected with its vascular territory, the brain (warped mask) and tissue
    (GM + WM > 0.5: it does not grow into ventricles or sulci). Lesions never touch each other, so the
    realised component count equals the plan unless a lesion finds no room.
    The main lesion is cortical (grey matter + underlying white matter) with probability
    ``sigmoid(a + 0.6 * ln(V / 5290 mm^3))``, ``a`` solved so that the marginal share is
    ``cortical_fraction`` (0.63, the real proportion): large lesions are mostly cortical, small ones
    mostly subcortical, as in chronic stroke cohorts. 60 % of extra lesions are satellites in the same
    territory; the others are placed anew.

Territories (MNI152NLin2009aSym mm; ellipsoid centre and radii for the right hemisphere, mirrored for
the left, intersected with the subject's tissue maps; see :data:`TERRITORIES`)
    cortical: MCA 72 % (lateral frontal/parietal/temporal convexity and insula, |x| >= 18), PCA 18 %
    (occipital lobe), ACA 10 % (medial frontal/parietal); the centre lies in grey matter.
    subcortical: basal ganglia 38 %, thalamus 20 %, periventricular white matter 17 % (centre in WM),
    brainstem 13 % (pons, paramedian), cerebellum 12 %.

Intensities
    The lesion is hypointense, its look drawn per subject (:func:`draw_lesion_look`, ranges in
    :data:`PROFILES`): a core anywhere from CSF-like to 60 % of the way to grey matter (template units:
    CSF ~0.31, GM ~0.66, WM ~0.84), smooth texture (SD 0-0.06, 1-4 mm), a brighter gliotic rim inside
    the border (0-0.15, 1-3 mm), a CSF-like cavity deeper than 2-6 mm in 40 % of subjects, blended into
    the tissue by a partial-volume weight (the lesion blurred with SD 0.4-1.2 mm). A lesion touching the
    lateral ventricle (or any lesion > 40 mL) enlarges the ipsilateral ventricle by ~2 mm (ex-vacuo
    dilatation). The tissue contrast is then remapped (GM-WM difference x 0.85-1.15, CSF +-0.04). Then
    per site (R001, R002, ...) and per subject: gamma (0.81-1.24), smooth multiplicative bias field (SD
    ``bias`` in log units), arbitrary scanner scale (WM ~300-3,000) and Rician noise (SD ~``noise`` x WM).
    The core stops at 60 % because a lesion nearer grey matter is invisible in cortex and deep grey matter
    at 2 mm (a label without image evidence, which no T1 tracer would draw).
    ``profile = "shifted"`` draws every one of these outside the training ranges (darker-than-CSF or
    62-72 % cores, coarse texture, strong rim, soft edges, GM-WM contrast x 0.4-0.6, brighter
    CSF, gamma 0.6-0.75 or 1.35-1.6, 2.2-3.2 x noise, bias SD 0.22-0.3, 0.8-1.4 mm through-plane blur):
    an out-of-domain test set. The template is skull-stripped, so by
    default the synthetic T1s are brain-extracted (background exactly 0); with ``whole_head`` the brain
    is wrapped in a defaced head (CSF rim, skull, scalp, neck, noisy air; :mod:`raxnet.synthetic_head`)
    drawn from its own stream ``(3, set, i)``, so brain, lesions, bias and noise are the same as without it.

Files
    The exact ATLAS v2.0 BIDS names (``Training/R###/sub-r###s###/ses-1/anat/sub-..._ses-1_space-
    MNI152NLin2009aSym_T1w.nii.gz`` and ``..._label-L_desc-T1lesion_mask.nii.gz``), sform/qform code 4
    (MNI) with the ATLAS affine. T1 is stored as **int16** (scanner-like integers, half the size of
    float32); the mask as uint8 0/1. Training subject ``i`` (0-based) is ``sub-r{i % K + 1:03d}s{i // K + 1:03d}``
    (round-robin over K sites); Testing subject ``j`` is numbered from 901 in its site
    (``sub-r001s901``), T1 only. ``synthetic_lesions.csv`` at the root is the ground truth;
    ``dataset_description.json`` marks the folder as generated (re-runs may then overwrite it and remove
    stale subjects; any other non-empty folder is refused).

Determinism: subject ``i``'s randomness is ``SeedSequence(seed, spawn_key=(0, i))`` (testing:
``(1, j)``, site scanner effects ``(2, site)``), so adding subjects does not change earlier ones and
``jobs`` > 1 gives identical files.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from raxnet import templates
from raxnet.errors import ConfigError
from raxnet.io import save_csv, save_json, save_nifti
from raxnet.log import get_logger, progress
from raxnet.random_fields import smooth_field, smooth_noise
from raxnet.synthetic_head import build_head

log = get_logger(__name__)

#: ``[synthetic]`` configuration section.
DEFAULTS: dict[str, Any] = {
    "subjects": 40,  # labelled Training subjects
    "spacing": 2,  # grid in mm: 1 = real 197x233x189 grid, 2 = same field of view at 99x117x95
    "sites": 4,  # sites R001..R00K; subjects are assigned round-robin
    "testing": 0,  # unlabelled Testing subjects (T1 only, no mask)
    "cortical_fraction": 0.63,  # share of subjects whose main lesion is cortical (real ATLAS: 63 %)
    "deform_mm": 3.0,  # SD of the random anatomical displacement at the control points (mm)
    "noise": 0.025,  # mean Rician noise SD as a fraction of the white-matter intensity
    "bias": 0.1,  # SD of the log multiplicative bias field (0.1: about +-20 % across the brain)
    "whole_head": False,  # wrap the brain in CSF, skull, scalp and neck, deface, noisy air (raxnet.synthetic_head)
    "profile": "training",  # appearance ranges: "training", or "shifted" (all outside them: out-of-domain tests)
}

#: The [synthetic] keys that shape each subject (the rest say how many and where).
SUBJECT_KEYS = ("cortical_fraction", "deform_mm", "noise", "bias", "whole_head", "profile")

SPACE = "space-MNI152NLin2009aSym"
T1_SUFFIX = f"_ses-1_{SPACE}_T1w.nii.gz"
MASK_SUFFIX = f"_ses-1_{SPACE}_label-L_desc-T1lesion_mask.nii.gz"
TABLE_NAME = "synthetic_lesions.csv"
GENERATOR_NAME = "raxnet.synthetic"
TESTING_OFFSET = 900
_SUBJECT_DIR_RE = re.compile(r"^sub-r(\d{3})s(\d{3})$")

# --- lesion statistics model (parameters embedded; see module docstring) -------------------------------
#: (percentile, total lesion volume in mm^3) of the real ATLAS v2.0 training set (655 subjects).
VOLUME_QUANTILES: tuple[tuple[float, float], ...] = (
    (0.0, 13.0),
    (5.0, 174.7),
    (10.0, 379.8),
    (25.0, 1169.5),
    (50.0, 5290.0),
    (75.0, 36055.0),
    (90.0, 106089.0),
    (95.0, 152838.0),
    (100.0, 496656.0),
)
#: P(number of 26-connected lesions) for 1..9; the remaining mass is spread over 10..33 as 1/n.
_COUNT_HEAD = {1: 0.47, 2: 0.21, 3: 0.12, 4: 0.08, 5: 0.03, 6: 0.023, 7: 0.017, 8: 0.02, 9: 0.011}
MAX_LESIONS = 33
MAIN_FRACTION_BETA = (1.4, 0.45)
MAIN_FRACTION_MIN = 0.3
CORTICAL_SLOPE = 0.6  # log-odds of "cortical" per unit of ln(volume)
SATELLITE_PROB = 0.6


def _count_probabilities() -> np.ndarray:
    p = np.zeros(MAX_LESIONS + 1)
    for n, q in _COUNT_HEAD.items():
        p[n] = q
    tail = np.arange(10, MAX_LESIONS + 1)
    p[tail] = (1.0 - sum(_COUNT_HEAD.values())) * (1.0 / tail) / (1.0 / tail).sum()
    return p


COUNT_PROBS = _count_probabilities()

#: name -> (category, centre mm for the right hemisphere, radii mm, min |x| or None, tissue for the centre)
TERRITORIES: dict[str, tuple[str, tuple[float, float, float], tuple[float, float, float], float | None, str]] = {
    "MCA": ("cortical", (44.0, -12.0, 12.0), (30.0, 52.0, 40.0), 18.0, "gm"),
    "ACA": ("cortical", (8.0, 18.0, 38.0), (16.0, 50.0, 32.0), 0.0, "gm"),
    "PCA": ("cortical", (18.0, -78.0, 2.0), (22.0, 28.0, 24.0), 0.0, "gm"),
    "basal_ganglia": ("subcortical", (22.0, 4.0, 2.0), (12.0, 18.0, 12.0), 0.0, "any"),
    "thalamus": ("subcortical", (12.0, -18.0, 6.0), (8.0, 12.0, 9.0), 0.0, "any"),
    "periventricular_wm": ("subcortical", (26.0, -12.0, 24.0), (10.0, 30.0, 12.0), 0.0, "wm"),
    "brainstem": ("subcortical", (5.0, -28.0, -30.0), (9.0, 12.0, 18.0), -4.0, "any"),
    "cerebellum": ("subcortical", (26.0, -62.0, -36.0), (20.0, 18.0, 14.0), 0.0, "any"),
}
TERRITORY_PROBS: dict[str, dict[str, float]] = {
    "cortical": {"MCA": 0.72, "PCA": 0.18, "ACA": 0.10},
    "subcortical": {
        "basal_ganglia": 0.38,
        "thalamus": 0.20,
        "periventricular_wm": 0.17,
        "brainstem": 0.13,
        "cerebellum": 0.12,
    },
}
#: Lateral-ventricle search box (mm, |x|, y, z) used for the ex-vacuo enlargement.
_VENTRICLE_BOX = ((0.0, 30.0), (-45.0, 30.0), (-5.0, 35.0))

# Template intensity levels (0..1 scale of the MNI T1): CSF / GM / WM medians are 0.31 / 0.66 / 0.84.
CSF_LEVEL = 0.31
GM_LEVEL = 0.66
WM_LEVEL = 0.84

# --- appearance: lesion look and scanner, drawn from a profile's ranges -------------------------------------
Intervals = tuple[tuple[float, float], ...]

#: Per-subject ranges of the ``training`` profile and of the ``shifted`` profile, whose values all lie
#: outside the training ranges (an out-of-domain test set). A value is drawn uniformly from the union of
#: the intervals. ``core``/``cavity`` are fractions of the way from CSF (0) to GM (1) intensity;
#: ``texture``/``rim`` in template units (CSF 0.31, GM 0.66, WM 0.84); lengths in mm; ``gm_contrast`` is
#: the WM-GM difference relative to the template's; ``csf_shift`` moves the CSF level; ``gamma`` and
#: ``noise`` (a factor on ``[synthetic] noise``) are per site x per subject in training (site ranges here,
#: then a 0.95-1.05 / 0.8-1.25 subject jitter: gamma 0.81-1.24, noise 0.4-1.9 in all) and per subject
#: in the shifted profile; ``bias`` (SD of the log bias field) is ``[synthetic] bias`` in training;
#: ``blur_mm`` is a Gaussian blur along one random axis (thick slices).
PROFILES: dict[str, dict[str, Intervals]] = {
    "training": {
        "core": ((0.0, 0.6),),
        "texture": ((0.0, 0.06),),
        "texture_mm": ((1.0, 4.0),),
        "rim": ((0.0, 0.15),),
        "rim_mm": ((1.0, 3.0),),
        "edge_mm": ((0.4, 1.2),),
        "gm_contrast": ((0.85, 1.15),),
        "csf_shift": ((-0.04, 0.04),),
        "gamma": ((0.85, 1.18),),
        "noise": ((0.5, 1.5),),
        "blur_mm": ((0.0, 0.0),),
    },
    "shifted": {
        "core": ((-0.3, -0.08), (0.62, 0.72)),
        "texture": ((0.07, 0.1),),
        "texture_mm": ((4.5, 6.0),),
        "rim": ((0.16, 0.22),),
        "rim_mm": ((3.2, 4.5),),
        "edge_mm": ((1.3, 2.0),),
        "gm_contrast": ((0.4, 0.6),),
        "csf_shift": ((0.08, 0.13),),
        "gamma": ((0.6, 0.75), (1.35, 1.6)),
        "noise": ((2.2, 3.2),),
        "bias": ((0.22, 0.3),),
        "blur_mm": ((0.8, 1.4),),
    },
}
CAVITY_PROB = 0.4  # share of subjects whose lesion core is cavitated (CSF-like beyond a depth)


def draw_from(rng: np.random.Generator, intervals: Intervals) -> float:
    """Uniform draw from a union of intervals (each chosen with probability proportional to its length)."""
    lengths = np.array([hi - lo for lo, hi in intervals], dtype=float)
    k = int(rng.choice(len(intervals), p=lengths / lengths.sum())) if lengths.sum() > 0 else 0
    lo, hi = intervals[k]
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


@dataclass(frozen=True)
class LesionLook:
    """How one subject's lesions look (see :data:`PROFILES` for units and ranges)."""

    core: float
    texture: float
    texture_mm: float
    rim: float
    rim_mm: float
    edge_mm: float
    cavity_mm: float  # depth (mm) beyond which the core turns into the cavity; 0 = no cavity
    cavity: float


def draw_lesion_look(rng: np.random.Generator, profile: str = "training") -> LesionLook:
    """Draw one subject's :class:`LesionLook` from ``profile``."""
    r = PROFILES[profile]
    values = {k: draw_from(rng, r[k]) for k in ("core", "texture", "texture_mm", "rim", "rim_mm", "edge_mm")}
    cavitated = rng.random() < CAVITY_PROB
    depth, level = float(rng.uniform(2.0, 6.0)), float(rng.uniform(-0.05, 0.1))
    return LesionLook(**values, cavity_mm=depth if cavitated else 0.0, cavity=level)


def render_lesion(
    t1: np.ndarray, lesion: np.ndarray, brain: np.ndarray, look: LesionLook, spacing: float, rng: np.random.Generator
) -> None:
    """Paint ``lesion`` into ``t1`` in place (template units, same box shape).

    Intensity = core (a fraction of the way from CSF to GM) + smooth texture + a gliotic rim just inside
    the border, turning CSF-like (the cavity) deeper than ``cavity_mm``; blended into the tissue by a
    partial-volume weight = the lesion blurred with SD ``edge_mm`` (at least 0.85 inside the lesion).
    """
    if not lesion.any():
        return
    nzl = np.argwhere(lesion)
    pad = int(math.ceil(max(4.0, 3.0 * look.edge_mm) / spacing))
    lo = np.maximum(nzl.min(0) - pad, 0)
    hi = np.minimum(nzl.max(0) + pad + 1, lesion.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    les = lesion[sl]
    pv = ndimage.gaussian_filter(les.astype(np.float32), look.edge_mm / spacing)
    pv = np.maximum(pv, 0.85 * les) * brain[sl]
    depth = ndimage.distance_transform_edt(les) * spacing
    level = CSF_LEVEL + look.core * (GM_LEVEL - CSF_LEVEL)
    if look.cavity_mm > 0:
        cav = CSF_LEVEL + look.cavity * (GM_LEVEL - CSF_LEVEL)
        w = np.clip((depth - look.cavity_mm) / 1.5, 0.0, 1.0)
        level = level + w * (cav - level)
    inner = np.float32(level)
    if look.texture > 0:
        inner = inner + look.texture * smooth_noise(rng, les.shape, look.texture_mm / spacing)
    if look.rim > 0:
        inner = inner + look.rim * np.exp(-np.maximum(depth - spacing, 0.0) / look.rim_mm)
    lesion_int = np.clip(inner, 0.05, 0.98 * GM_LEVEL).astype(np.float32)
    t1[sl] = (1.0 - pv) * t1[sl] + pv * lesion_int * (t1[sl] > 0)


def remap_contrast(t1: np.ndarray, gm_contrast: float, csf_shift: float) -> np.ndarray:
    """Piecewise-linear remap of template intensities: CSF moves by ``csf_shift``, GM to ``WM - gm_contrast
    x (WM - GM)``, WM and 0 stay; a lesion keeps its place between CSF and GM. Returns a new array."""
    knots = [0.0, CSF_LEVEL, GM_LEVEL, WM_LEVEL, 2.0]
    values = [0.0, CSF_LEVEL + csf_shift, WM_LEVEL - gm_contrast * (WM_LEVEL - GM_LEVEL), WM_LEVEL, 2.0]
    return np.interp(t1, knots, values).astype(np.float32)


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def volume_quantile(u: np.ndarray | float) -> np.ndarray:
    """Total lesion volume (mm^3) at probability ``u`` in [0, 1] (piecewise log-linear quantile function)."""
    pct = np.array([q for q, _ in VOLUME_QUANTILES]) / 100.0
    logv = np.log([v for _, v in VOLUME_QUANTILES])
    return np.exp(np.interp(u, pct, logv))


@functools.lru_cache(maxsize=8)
def _cortical_intercept(fraction: float) -> float:
    """Intercept ``a`` such that E_u[sigmoid(a + slope * ln(V(u)/median))] == fraction."""
    u = (np.arange(4000) + 0.5) / 4000
    x = CORTICAL_SLOPE * (np.log(volume_quantile(u)) - math.log(5290.0))
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(np.mean(_sigmoid(mid + x))) < fraction:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def cortical_probability(volume_mm3: float | np.ndarray, cortical_fraction: float = 0.63) -> np.ndarray:
    """Probability that a subject's main lesion is cortical given its total volume (mm^3)."""
    a = _cortical_intercept(cortical_fraction)
    return _sigmoid(a + CORTICAL_SLOPE * (np.log(volume_mm3) - math.log(5290.0)))


def _pick(rng: np.random.Generator, probs: Mapping[str, float]) -> str:
    names = list(probs)
    p = np.array([probs[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_lesion_plan(
    rng: np.random.Generator, spacing: int = 1, cortical_fraction: float = 0.63
) -> dict[str, Any]:
    """Draw one subject's lesion plan: total volume, per-lesion volumes, territories and hemispheres.

    Returns ``{"total_mm3", "volumes_mm3" (largest first), "categories", "territories", "hemispheres"}``
    (hemisphere +1 = right, -1 = left). Pure sampling, no image: tests compare many draws with the real
    ATLAS table.
    """
    total = float(volume_quantile(rng.random()))
    n = int(rng.choice(MAX_LESIONS + 1, p=COUNT_PROBS))
    min_mm3 = 2.0 * spacing**3  # two voxels: the smallest fragment the grid can hold
    n = max(1, min(n, int(total // min_mm3)))
    if n == 1:
        volumes = [total]
    else:
        main = max(MAIN_FRACTION_MIN, float(rng.beta(*MAIN_FRACTION_BETA)))
        rest = rng.dirichlet(np.ones(n - 1)) * (1.0 - main) * total
        rest = np.maximum(rest, min_mm3)
        volumes = [max(main * total, float(rest.max()))] + sorted(rest.tolist(), reverse=True)
    main_cortical = rng.random() < float(cortical_probability(total, cortical_fraction))
    cat = "cortical" if main_cortical else "subcortical"
    categories = [cat]
    territories = [_pick(rng, TERRITORY_PROBS[cat])]
    hemispheres = [1 if rng.random() < 0.5 else -1]
    for _ in range(1, n):
        if rng.random() < SATELLITE_PROB:
            categories.append(categories[0])
            territories.append(territories[0])
            hemispheres.append(hemispheres[0])
        else:
            c = "cortical" if rng.random() < cortical_fraction else "subcortical"
            categories.append(c)
            territories.append(_pick(rng, TERRITORY_PROBS[c]))
            hemispheres.append(hemispheres[0] if rng.random() < 0.7 else -hemispheres[0])
    return {
        "total_mm3": total,
        "volumes_mm3": [float(v) for v in volumes],
        "categories": categories,
        "territories": territories,
        "hemispheres": hemispheres,
    }


# --- geometry helpers ------------------------------------------------------------------------------------
def _axes_mm(affine: np.ndarray, start: Sequence[int], stop: Sequence[int]) -> list[np.ndarray]:
    """mm coordinates along each axis for voxel ranges [start, stop) of a diagonal affine."""
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("synthetic generator expects a diagonal (axis-aligned) affine")
    return [
        (affine[a, a] * np.arange(start[a], stop[a]) + affine[a, 3]).astype(np.float32) for a in range(3)
    ]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


_STRUCT26 = np.ones((3, 3, 3), dtype=bool)


def _box(center: Sequence[int], half: Sequence[int], shape: Sequence[int]) -> tuple[list[int], list[int]]:
    lo = [max(0, int(c) - int(h)) for c, h in zip(center, half)]
    hi = [min(int(s), int(c) + int(h) + 1) for c, h, s in zip(center, half, shape)]
    return lo, hi


def _territory_in_box(
    name: str, hemi: int, axes_mm: Sequence[np.ndarray], scale: float = 1.0
) -> np.ndarray:
    """Boolean ellipsoid of territory ``name`` (hemisphere ``hemi``) on the box with mm axes ``axes_mm``."""
    _, centre, radii, min_x, _ = TERRITORIES[name]
    cx = centre[0] * hemi
    x, y, z = axes_mm
    d = (
        ((x - cx) / (radii[0] * scale))[:, None, None] ** 2
        + ((y - centre[1]) / (radii[1] * scale))[None, :, None] ** 2
        + ((z - centre[2]) / (radii[2] * scale))[None, None, :] ** 2
    )
    inside = d <= 1.0
    if min_x is not None:
        inside &= (x * hemi >= min_x)[:, None, None]
    return inside


def _warp_trilinear(rows: np.ndarray, shape: Sequence[int], coords: Sequence[np.ndarray]) -> np.ndarray:
    """Trilinear sampling of a C-channel volume of ``shape`` at voxel ``coords`` (3 flat arrays).

    ``rows`` is the volume as one void record of C float32 per voxel (see :func:`_template_rows`): a
    gather then moves all channels of a voxel at once, several times faster than per-channel
    ``scipy.ndimage.map_coordinates(order=1)``, with the same values. Points are clamped to the grid:
    the templates are 0 at their borders, so clamping equals constant-0 padding here. Returns (N, C).
    """
    n_ch = rows.dtype.itemsize // 4
    base = np.zeros(coords[0].shape, dtype=np.int32)
    fracs = []
    for a in range(3):
        c = np.clip(coords[a], 0.0, shape[a] - 1.0)
        f = np.minimum(np.floor(c), shape[a] - 2).astype(np.int32)
        fracs.append((c - f).astype(np.float32))
        base = base * np.int32(shape[a]) + f
    strides = (shape[1] * shape[2], shape[2], 1)
    out = np.zeros((base.size, n_ch), dtype=np.float32)
    for dx in (0, 1):
        wx = fracs[0] if dx else 1.0 - fracs[0]
        for dy in (0, 1):
            wxy = wx * (fracs[1] if dy else 1.0 - fracs[1])
            for dz in (0, 1):
                w = wxy * (fracs[2] if dz else 1.0 - fracs[2])
                idx = base + np.int32(dx * strides[0] + dy * strides[1] + dz)
                out += rows[idx].view(np.float32).reshape(-1, n_ch) * w[:, None]
    return out


_TEMPLATE_KINDS = ("t1", "gm", "wm", "brain_mask")


@functools.lru_cache(maxsize=2)
def _template_rows(spacing: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cached per spacing: the 4 templates as void records, the brain box ``lo``/``hi`` and the
    flat indices (in that box) of voxels within 10 mm of the template's support, the only ones warped."""
    shape, _ = templates.grid(spacing)
    data = [templates.template_data(k, spacing) for k in _TEMPLATE_KINDS]
    stack = np.ascontiguousarray(np.stack(data, axis=-1), dtype=np.float32)
    rows = stack.reshape(-1, len(data)).view(np.dtype((np.void, 4 * len(data)))).ravel()
    support = (data[3] > 0) | (data[0] > 1e-3)
    margin = int(math.ceil(10.0 / spacing))
    nz = np.argwhere(support)
    lo = np.maximum(nz.min(0) - margin, 0)
    hi = np.minimum(nz.max(0) + margin + 1, shape)
    sub = support[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    near = ndimage.binary_dilation(sub, structure=ndimage.generate_binary_structure(3, 1), iterations=margin)
    return rows, lo, hi, np.flatnonzero(near).astype(np.int64)


class _Anatomy:
    """The warped templates of one subject, cropped to the brain's bounding box."""

    def __init__(self, rng: np.random.Generator, spacing: int, deform_mm: float) -> None:
        shape, affine = templates.grid(spacing)
        self.shape, self.affine, self.spacing = shape, affine, spacing
        rows, self.lo, self.hi, sel = _template_rows(spacing)
        box = tuple(int(h - lo) for lo, h in zip(self.lo, self.hi))
        self.box_shape = box
        self.box = tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi))
        self.axes_mm = _axes_mm(affine, self.lo, self.hi)
        # Smooth displacement (voxels) + small per-axis scaling about the brain centre.
        n_ctrl = [max(3, int(round(b * spacing / 25.0)) + 1) for b in box]
        coords = []
        for a in range(3):
            # Clipped at 2.5 SD: registered scans keep only a few mm of residual misalignment.
            disp = np.clip(smooth_field(rng, box, n_ctrl), -2.5, 2.5) * np.float32(deform_mm / spacing)
            scale = np.float32(1.0 + rng.uniform(-0.03, 0.03))
            ax = np.arange(box[a], dtype=np.float32)
            ax = ax + np.float32(self.lo[a]) + (ax - np.float32(box[a] / 2.0)) * (scale - 1.0) / scale
            view = [1, 1, 1]
            view[a] = box[a]
            disp += ax.reshape(view)
            coords.append(disp.ravel()[sel])
        values = np.clip(_warp_trilinear(rows, shape, coords), 0.0, 1.0)
        del coords
        out = []
        for k in range(len(_TEMPLATE_KINDS)):
            vol = np.zeros(int(np.prod(box)), dtype=np.float32)
            vol[sel] = values[:, k]
            out.append(vol.reshape(box))
        self.t1, self.gm, self.wm = out[0], out[1], out[2]
        self.t1[self.t1 < 1e-3] = 0.0  # the 2 mm template carries ~1e-45 resampling dust
        self.brain = out[3] > 0.5
        self.tissue = self.brain & (self.gm + self.wm > 0.5)

    def to_full(self, arr: np.ndarray, dtype: Any) -> np.ndarray:
        out = np.zeros(self.shape, dtype=dtype)
        out[self.box] = arr
        return out

    def voxel_of_mm(self, xyz: Sequence[float]) -> np.ndarray:
        """Box voxel index of an mm coordinate."""
        ijk = np.linalg.solve(self.affine, np.r_[np.asarray(xyz, float), 1.0])[:3]
        return np.round(ijk).astype(int) - self.lo


def _pick_centre(
    rng: np.random.Generator, anat: _Anatomy, territory: str, hemi: int, free: np.ndarray
) -> np.ndarray | None:
    """A random box voxel inside the territory, on the tissue its centre must lie in, not near other lesions."""
    _, centre, radii, _, centre_tissue = TERRITORIES[territory]
    c_vox = anat.voxel_of_mm((centre[0] * hemi, centre[1], centre[2]))
    half = [int(math.ceil(r / anat.spacing)) + 1 for r in radii]
    lo, hi = _box(c_vox, half, anat.box_shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    axes = [anat.axes_mm[a][lo[a] : hi[a]] for a in range(3)]
    cand = _territory_in_box(territory, hemi, axes) & anat.tissue[sl] & free[sl]
    if centre_tissue == "gm":
        cand &= anat.gm[sl] > 0.5
    elif centre_tissue == "wm":
        cand &= anat.wm[sl] > 0.6
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        return None
    k = idx[int(rng.integers(idx.size))]
    return np.array(np.unravel_index(k, cand.shape)) + np.array(lo)


def _largest_component(sel: np.ndarray) -> tuple[np.ndarray, int]:
    lab, n = ndimage.label(sel, structure=_STRUCT26)
    if n == 0:
        return np.zeros_like(sel), 0
    sizes = np.bincount(lab.ravel())[1:]
    k = int(sizes.argmax())
    return lab == k + 1, int(sizes[k])


def _grow_lesion(
    rng: np.random.Generator,
    anat: _Anatomy,
    centre: np.ndarray,
    target_vox: int,
    territory: str,
    hemi: int,
    free: np.ndarray,
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Grow one connected irregular lesion of about ``target_vox`` voxels; returns (box slices, mask)."""
    sp = anat.spacing
    r_mm = (3.0 * target_vox * sp**3 / (4.0 * math.pi)) ** (1.0 / 3.0)
    aniso = np.exp(rng.normal(0.0, 0.25, 3)).astype(np.float32)
    aniso /= aniso.prod() ** (1.0 / 3.0)
    rot = _random_rotation(rng)
    amp = float(rng.uniform(0.5, 0.9))
    corr_vox = float(np.clip(0.35 * r_mm, 1.5, 10.0)) / sp
    for scale in (1.6, 2.1, 2.8, 3.7, 5.0):
        radii = np.maximum(r_mm * scale * aniso, 1.5 * sp)
        half = [int(math.ceil(r / sp)) + 1 for r in radii.max() * np.ones(3)]
        lo, hi = _box(centre, half, anat.box_shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        axes = [anat.axes_mm[a][lo[a] : hi[a]] for a in range(3)]
        allowed = anat.tissue[sl] & free[sl] & _territory_in_box(territory, hemi, axes, scale=min(2.0, scale / 1.6))
        if territory != "brainstem":  # only the brainstem lesions may cross the midline
            allowed &= (axes[0] * hemi >= 1.0)[:, None, None]
        n_allowed = int(allowed.sum())
        if n_allowed < 1.3 * target_vox and scale < 5.0:
            continue
        c_mm = np.array([anat.axes_mm[a][centre[a]] for a in range(3)], dtype=np.float32)
        x = (axes[0] - c_mm[0])[:, None, None]
        y = (axes[1] - c_mm[1])[None, :, None]
        z = (axes[2] - c_mm[2])[None, None, :]
        d2 = np.zeros(allowed.shape, dtype=np.float32)
        for a in range(3):
            d2 += ((rot[a, 0] * x + rot[a, 1] * y + rot[a, 2] * z) / radii[a]) ** 2
        field = 1.0 - d2 + amp * smooth_noise(rng, allowed.shape, corr_vox)
        if territory != "brainstem":
            # Soft fall-off over the 10 mm next to the midline: a huge lesion ends irregularly near the
            # falx instead of along a straight cut.
            near_mid = np.clip((10.0 - axes[0] * hemi) / 10.0, 0.0, 1.0) ** 2
            field -= (1.5 * near_mid).astype(np.float32)[:, None, None]
        vals = np.sort(field[allowed])[::-1]
        if vals.size == 0:
            return None
        k_lo, k_hi = min(target_vox, vals.size), vals.size
        best, size = _largest_component(allowed & (field >= vals[k_lo - 1]))
        if size < target_vox:
            best_hi, size_hi = _largest_component(allowed & (field >= vals[k_hi - 1]))
            if size_hi <= target_vox:
                best, size = best_hi, size_hi
            else:
                for _ in range(14):  # bisection on the number of candidate voxels
                    if k_hi - k_lo <= max(1, k_lo // 50):
                        break
                    k_mid = (k_lo + k_hi) // 2
                    comp, s = _largest_component(allowed & (field >= vals[k_mid - 1]))
                    if s >= target_vox:
                        k_hi, best_hi, size_hi = k_mid, comp, s
                    else:
                        k_lo = k_mid
                best, size = best_hi, size_hi
        return (sl, best) if size > 0 else None
    return None


def _lateral_ventricle(anat: _Anatomy, hemi: int) -> np.ndarray:
    """The subject's lateral ventricle on side ``hemi``: largest deep-CSF component in the ventricle box."""
    x, y, z = anat.axes_mm
    (x0, x1), (y0, y1), (z0, z1) = _VENTRICLE_BOX
    box = (
        ((x * hemi >= x0) & (x * hemi <= x1))[:, None, None]
        & ((y >= y0) & (y <= y1))[None, :, None]
        & ((z >= z0) & (z <= z1))[None, None, :]
    )
    vent, n = ndimage.label(anat.brain & (anat.gm + anat.wm < 0.35) & box)
    if n == 0:
        return np.zeros(anat.box_shape, dtype=bool)
    return vent == int(np.bincount(vent.ravel())[1:].argmax()) + 1


def _enlarge_ventricle(anat: _Anatomy, lesion: np.ndarray, vent: np.ndarray, hemi: int, mm: float) -> int:
    """Ex-vacuo dilatation of the ipsilateral lateral ventricle by ``mm``; returns voxels turned to CSF."""
    iters = max(1, int(round(mm / anat.spacing)))
    grown = ndimage.binary_dilation(vent, iterations=iters) & anat.brain & ~lesion & ~vent
    grown &= (anat.axes_mm[0] * hemi > 0)[:, None, None]
    if grown.any():
        q = ndimage.gaussian_filter(grown.astype(np.float32), 0.6 / anat.spacing)
        q = np.maximum(q, grown.astype(np.float32))
        anat.t1 = anat.t1 * (1.0 - q) + CSF_LEVEL * 0.9 * q * (anat.t1 > 0)
        anat.gm = anat.gm * (1.0 - q)
        anat.wm = anat.wm * (1.0 - q)
    return int(grown.sum())


def _keys(index: int, testing: bool) -> tuple[int, int]:
    return (1 if testing else 0, int(index))


def subject_site(index: int, n_sites: int, testing: bool = False) -> tuple[str, str]:
    """(subject id, site) of training (or testing) subject ``index`` (0-based) with ``n_sites`` sites."""
    site = index % n_sites + 1
    num = index // n_sites + 1 + (TESTING_OFFSET if testing else 0)
    if num > 999 or site > 999:
        raise ConfigError(f"subject {index}: too many subjects per site for the sub-r###s### naming")
    return f"sub-r{site:03d}s{num:03d}", f"R{site:03d}"


def _site_scanner(seed: int, site: str) -> dict[str, float]:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, int(site[1:]))))
    return {
        "scale": float(np.exp(rng.uniform(math.log(300.0), math.log(3000.0)))),
        "gamma": float(rng.uniform(0.85, 1.18)),
        "noise": float(rng.uniform(0.5, 1.5)),
    }


def generate_subject(
    index: int,
    seed: int,
    spacing: int = 2,
    *,
    testing: bool = False,
    n_sites: int = DEFAULTS["sites"],
    params: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate one subject: ``(t1 float32, mask uint8 0/1, affine, info)`` on the ATLAS grid at ``spacing``.

    ``t1`` holds scanner-like units (already integer-valued; written as int16). ``info`` is this subject's
    row of the ground-truth table. Randomness comes only from ``(seed, testing, index)`` and the site.
    """
    p = {**DEFAULTS, **(params or {})}
    if spacing not in (1, 2):
        raise ConfigError(f"[synthetic] spacing must be 1 or 2 mm, got {spacing}")
    profile = str(p["profile"])
    if profile not in PROFILES:
        raise ConfigError(f"[synthetic] profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    ranges = PROFILES[profile]
    t0 = time.perf_counter()
    subject, site = subject_site(index, n_sites, testing)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=_keys(index, testing)))
    anat = _Anatomy(rng, spacing, float(p["deform_mm"]))
    plan = sample_lesion_plan(rng, spacing, float(p["cortical_fraction"]))

    lesion = np.zeros(anat.box_shape, dtype=bool)
    free = np.ones(anat.box_shape, dtype=bool)  # not 26-adjacent to an existing lesion
    placed: list[tuple[str, str, int]] = []
    requested = 0.0
    for vol, cat, terr, hemi in zip(plan["volumes_mm3"], plan["categories"], plan["territories"], plan["hemispheres"]):
        target = max(2, int(round(vol / spacing**3)))
        centre = _pick_centre(rng, anat, terr, hemi, free)
        if centre is None:
            continue
        grown = _grow_lesion(rng, anat, centre, target, terr, hemi, free)
        if grown is None:
            continue
        sl, comp = grown
        lesion[sl] |= comp
        free[sl] &= ~ndimage.binary_dilation(comp, structure=_STRUCT26)
        placed.append((cat, terr, hemi))
        requested += vol
    main_hemi = placed[0][2] if placed else plan["hemispheres"][0]

    # Ex-vacuo enlargement when the lesion reaches the lateral ventricle, or is large.
    vent = _lateral_ventricle(anat, main_hemi)
    near = ndimage.binary_dilation(lesion, iterations=max(1, int(round(2.0 / spacing))))
    touches = bool((near & vent).any())
    big = lesion.sum() * spacing**3 > 40000
    enlarged = _enlarge_ventricle(anat, lesion, vent, main_hemi, 2.0) if (touches or big) else 0

    # Lesion intensities, then the tissue contrast.
    look = draw_lesion_look(rng, profile)
    render_lesion(anat.t1, lesion, anat.brain, look, spacing, rng)
    shifts = {k: draw_from(rng, ranges[k]) for k in ("gm_contrast", "csf_shift")}
    t1 = remap_contrast(anat.t1, **shifts)

    # Scanner: site effect x subject jitter (training) or per subject (shifted): gamma, bias field,
    # scale, blur, Rician noise.
    scanner = _site_scanner(seed, site)
    gamma_jitter, scale_jitter, noise_jitter = (float(rng.uniform(a, b)) for a, b in ((0.95, 1.05), (0.9, 1.1), (0.8, 1.25)))
    if profile == "training":
        gamma = scanner["gamma"] * gamma_jitter
        sigma = float(p["noise"]) * scanner["noise"] * noise_jitter
        bias_sd = float(p["bias"])
    else:
        gamma = draw_from(rng, ranges["gamma"])
        sigma = float(p["noise"]) * draw_from(rng, ranges["noise"])
        bias_sd = draw_from(rng, ranges["bias"])
    scale = scanner["scale"] * scale_jitter
    blur_mm = draw_from(rng, ranges["blur_mm"])
    blur_axis = int(rng.integers(3))
    sd = sigma * WM_LEVEL**gamma
    n_ctrl = [4, 5, 4]
    head_info: dict[str, Any] = {}
    if not p["whole_head"]:
        bias = np.exp(bias_sd * smooth_field(rng, anat.box_shape, n_ctrl))
        support = t1 > 0
        img = np.power(t1, gamma, dtype=np.float32) * bias
        if blur_mm > 0:
            img = ndimage.gaussian_filter1d(img, blur_mm / spacing, axis=blur_axis)
        n1 = rng.standard_normal(anat.box_shape, dtype=np.float32)
        n2 = rng.standard_normal(anat.box_shape, dtype=np.float32)
        img = np.sqrt((img + sd * n1) ** 2 + (sd * n2) ** 2) * scale
        img = anat.to_full(np.where(support, np.clip(np.rint(img), 1, 32767), 0), np.float32)
    else:
        # The brain, its bias field and its noise are drawn exactly as without the head (same voxels,
        # same values); the head has its own random stream, so switching it on changes nothing inside.
        field = smooth_field(rng, anat.box_shape, n_ctrl, extend=(anat.lo, anat.shape))
        bias = np.exp(bias_sd * field)
        hrng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, *_keys(index, testing))))
        brain = anat.to_full(t1 > 0, bool)
        head, inside, hp = build_head(brain | anat.to_full(anat.brain, bool), anat.affine, hrng)
        img = np.where(brain, anat.to_full(t1, np.float32), head)
        np.power(img, gamma, out=img)
        img *= bias
        if blur_mm > 0:
            img = ndimage.gaussian_filter1d(img, blur_mm / spacing, axis=blur_axis)
        noise = []
        outside = np.ones(anat.shape, dtype=bool)
        outside[anat.box] = False
        for _ in range(2):
            n = np.empty(anat.shape, dtype=np.float32)
            n[anat.box] = rng.standard_normal(anat.box_shape, dtype=np.float32)
            n[outside] = hrng.standard_normal(int(outside.sum()), dtype=np.float32)
            noise.append(n)
        img = np.sqrt((img + sd * noise[0]) ** 2 + (sd * noise[1]) ** 2) * scale
        img = np.clip(np.rint(img), 0, 32767)
        img[brain] = np.maximum(img[brain], 1.0)
        img[~inside] = 0.0
        head_info = {
            "head_csf_mm": round(hp.csf_mm, 2),
            "head_skull_mm": round(hp.inner_table_mm + hp.diploe_mm + hp.outer_table_mm, 2),
            "head_scalp_mm": round(hp.galea_mm + hp.fat_mm + hp.skin_mm, 2),
            "head_deface_deg": round(hp.deface_deg, 1),
        }

    mask = (lesion & anat.brain).astype(np.uint8)
    _, n_comp = ndimage.label(mask, structure=_STRUCT26)
    cats = {c for c, _, _ in placed}
    location = "both" if len(cats) > 1 else (next(iter(cats)) if cats else "none")
    terrs = sorted({f"{t}-{'R' if h > 0 else 'L'}" for _, t, h in placed})
    voxels = int(mask.sum())
    info = {
        "subject": subject,
        "site": site,
        "set": "testing" if testing else "training",
        "spacing": spacing,
        "location": location,
        "territories": ";".join(terrs),
        "hemisphere": "R" if main_hemi > 0 else "L",
        "n_lesions": int(n_comp),
        "planned_lesions": len(plan["volumes_mm3"]),
        "lesion_voxels": voxels,
        "lesion_mm3": voxels * spacing**3,
        "requested_mm3": round(requested, 1),
        "ventricle_enlarged": bool(enlarged > 0),
        "profile": profile,
        "lesion_core": round(look.core, 3),
        "lesion_texture": round(look.texture, 3),
        "lesion_rim": round(look.rim, 3),
        "lesion_edge_mm": round(look.edge_mm, 2),
        "lesion_cavity_mm": round(look.cavity_mm, 2),
        "gm_contrast": round(shifts["gm_contrast"], 3),
        "csf_shift": round(shifts["csf_shift"], 3),
        "gamma": round(gamma, 4),
        "scale": round(scale, 2),
        "noise_sd": round(sigma, 4),
        "bias_sd": round(bias_sd, 3),
        "blur_mm": round(blur_mm, 2),
        "whole_head": bool(p["whole_head"]),
        **head_info,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return img.astype(np.float32, copy=False), anat.to_full(mask, np.uint8), anat.affine.copy(), info


# --- dataset ----------------------------------------------------------------------------------------------
def subject_paths(root: str | Path, subject: str, site: str, testing: bool = False) -> tuple[Path, Path]:
    """ATLAS v2.0 paths ``(T1, mask)`` of a subject under ``root`` (the folder holding Training/)."""
    anat = Path(root) / ("Testing" if testing else "Training") / site / subject / "ses-1" / "anat"
    return anat / f"{subject}{T1_SUFFIX}", anat / f"{subject}{MASK_SUFFIX}"


def _reference(spacing: int) -> nib.Nifti1Image:
    shape, affine = templates.grid(spacing)
    img = nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), affine)
    img.set_qform(affine, code=4)
    img.set_sform(affine, code=4)
    img.header.set_xyzt_units("mm")
    return img


def _write_subject(task: tuple[str, int, int, int, bool, int, dict[str, Any]]) -> dict[str, Any]:
    root, index, seed, spacing, testing, n_sites, params = task
    t1, mask, _, info = generate_subject(index, seed, spacing, testing=testing, n_sites=n_sites, params=params)
    ref = _reference(spacing)
    t1_path, mask_path = subject_paths(root, info["subject"], info["site"], testing)
    save_nifti(t1, ref, t1_path, dtype=np.int16)
    if not testing:
        save_nifti(mask, ref, mask_path, dtype=np.uint8)
    return info


def _prepare_root(root: Path, keep: set[tuple[str, str, str]]) -> None:
    """Refuse a non-empty foreign folder; in our own folder remove subjects not in ``keep``."""
    desc = root / "dataset_description.json"
    if root.exists() and any(root.iterdir()):
        generated = False
        if desc.is_file():
            try:
                meta = json.loads(desc.read_text())
                generated = any(g.get("Name") == GENERATOR_NAME for g in meta.get("GeneratedBy", []))
            except (ValueError, AttributeError, TypeError):
                generated = False
        if not generated:
            raise ConfigError(
                f"{root}: folder exists, is not empty and is not a raxnet synthetic dataset; refusing to write"
            )
        for set_name in ("Training", "Testing"):
            for site_dir in sorted((root / set_name).glob("R[0-9][0-9][0-9]")):
                for sub_dir in sorted(site_dir.iterdir()):
                    if _SUBJECT_DIR_RE.match(sub_dir.name) and (set_name, site_dir.name, sub_dir.name) not in keep:
                        shutil.rmtree(sub_dir)
                if not any(site_dir.iterdir()):
                    site_dir.rmdir()
    root.mkdir(parents=True, exist_ok=True)


def generate_dataset(
    out_root: str | Path,
    n_subjects: int,
    seed: int,
    spacing: int = 2,
    n_sites: int = DEFAULTS["sites"],
    n_testing: int = 0,
    jobs: int = 1,
    params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Write an ATLAS v2.0-shaped dataset under ``out_root`` and return its ground-truth table.

    ``params`` overrides the keys of :data:`DEFAULTS` that shape a subject (:data:`SUBJECT_KEYS`:
    ``cortical_fraction``, ``deform_mm``, ``noise``, ``bias``, ``whole_head``, ``profile``). With more
    sites than subjects, one site per subject is used. The table (also written to ``<out_root>/synthetic_lesions.csv``) has one row per subject,
    training first, sorted by subject id.
    """
    
    if spacing not in (1, 2):
        raise ConfigError(f"[synthetic] spacing must be 1 or 2 mm, got {spacing}")
    if n_subjects < 1 or n_sites < 1 or n_testing < 0:
        raise ConfigError("[synthetic] needs subjects >= 1, sites >= 1 and testing >= 0")
    if n_sites > n_subjects:
        log.info("%d subject(s): using %d site(s) instead of %d", n_subjects, n_subjects, n_sites)
        n_sites = n_subjects
    if math.ceil(n_subjects / n_sites) > TESTING_OFFSET - 1 or math.ceil(n_testing / n_sites) > 999 - TESTING_OFFSET:
        raise ConfigError("[synthetic] too many subjects per site for the sub-r###s### naming")
    p = {k: v for k, v in {**DEFAULTS, **(params or {})}.items() if k in SUBJECT_KEYS}
    root = Path(out_root)
    tasks = [(str(root), i, int(seed), int(spacing), False, int(n_sites), p) for i in range(n_subjects)]
    tasks += [(str(root), j, int(seed), int(spacing), True, int(n_sites), p) for j in range(n_testing)]
    keep = set()
    for _, i, _, _, testing, _, _ in tasks:
        subject, site = subject_site(i, n_sites, testing)
        keep.add(("Testing" if testing else "Training", site, subject))
    _prepare_root(root, keep)
    _template_rows(spacing)  # load and cache the templates once, before forking workers

    rows: list[dict[str, Any]] = []
    desc = f"synthetic ATLAS {spacing} mm"
    if jobs > 1 and len(tasks) > 1:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(min(jobs, len(tasks))) as pool:
            for info in progress(pool.imap(_write_subject, tasks), total=len(tasks), desc=desc, unit="subj"):
                rows.append(info)
    else:
        for task in progress(tasks, desc=desc, unit="subj"):
            rows.append(_write_subject(task))

    table = pd.DataFrame(rows)
    table["_order"] = (table["set"] == "testing").astype(int)
    table = table.sort_values(["_order", "subject"]).drop(columns="_order")
    seconds = table.pop("seconds")
    table = table.reset_index(drop=True)
    save_csv(table, root / TABLE_NAME)
    save_json(
        {
            "Name": "RAX-Net synthetic ATLAS v2.0-shaped dataset",
            "BIDSVersion": "1.8.0",
            "DatasetType": "raw",
            "License": "Apache-2.0 (derived from the MNI152 2009a template shipped with nilearn)",
            "GeneratedBy": [
                {
                    "Name": GENERATOR_NAME,
                    "Description": "MNI152NLin2009aSym template, random deformation, synthetic chronic stroke lesions",
                }
            ],
            "SyntheticParameters": {
                "seed": int(seed),
                "spacing_mm": int(spacing),
                "subjects": int(n_subjects),
                "sites": int(n_sites),
                "testing": int(n_testing),
                **p,
            },
        },
        root / "dataset_description.json",
    )
    log.info(
        "wrote %d training + %d testing subjects (%s mm) under %s; %.1f s/subject",
        n_subjects, n_testing, spacing, root, float(seconds.mean()),
    )
    return table


# --- stage entry points -------------------------------------------------------------------------------------
def run(cfg: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """Generate the dataset described by ``[synthetic]`` into ``[run] data_root``; returns a summary."""
    from raxnet.config import section

    p = section(cfg, "synthetic", DEFAULTS)
    root = Path(run["data_root"])
    table = generate_dataset(
        root,
        int(p["subjects"]),
        int(run["seed"]),
        spacing=int(p["spacing"]),
        n_sites=int(p["sites"]),
        n_testing=int(p["testing"]),
        jobs=int(run.get("jobs") or 1),
        params=p,
    )
    train = table[table["set"] == "training"]
    return {
        "data_root": str(root),
        "table": str(root / TABLE_NAME),
        "subjects": int(len(train)),
        "testing": int((table["set"] == "testing").sum()),
        "median_lesion_mm3": float(train["lesion_mm3"].median()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``make_synthetic_atlas.py --out data/ATLAS_2 --subjects N --seed S [--spacing 1|2] ...``."""
    from raxnet.cli_common import resolve, stage_parser
    from raxnet.config import override, section

    parser = stage_parser(
        description=(
            "Write an ATLAS v2.0-shaped synthetic dataset (MNI152 2009a template, random anatomy,\n"
            "chronic-stroke-like lesions with the real ATLAS volume/count distribution)."
        ),
        data_root=True,
    )
    parser.add_argument("--out", dest="data_root", help="output root (same as --data-root; default [run] data_root)")
    parser.add_argument("--subjects", type=int, help="labelled Training subjects")
    parser.add_argument("--spacing", type=int, choices=(1, 2), help="1 = real 197x233x189 grid, 2 = 99x117x95")
    parser.add_argument("--sites", type=int, help="number of sites R001.. (at most --subjects)")
    parser.add_argument("--testing", type=int, help="unlabelled Testing subjects (no masks)")
    parser.add_argument("--whole-head", action=argparse.BooleanOptionalAction, default=None,
                        help="defaced whole-head T1s (scalp, skull, CSF rim, noisy air) instead of brain-only")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="appearance ranges: training (default) or shifted (out-of-domain test data)")
    args = parser.parse_args(argv)
    cfg, run_cfg = resolve(args)
    syn = override(
        section(cfg, "synthetic", DEFAULTS),
        subjects=args.subjects,
        spacing=args.spacing,
        sites=args.sites,
        testing=args.testing,
        whole_head=args.whole_head,
        profile=args.profile,
    )
    cfg = {**cfg, "synthetic": syn}
    summary = run(cfg, run_cfg)
    print(json.dumps(summary, indent=2))
    return 0
