"""Lesion statistics of binary masks: 3D components, volume, centroid, hemisphere, location, per-slice counts.

Pure numpy/scipy (plus the MNI152 templates for the location reference); used by stage 01, stage 08 and
``raxnet predict``.

Location rule (cortical / subcortical / both)
---------------------------------------------
Computed from an anatomical reference on the mask's grid, never hand-entered:

* the MNI152 2009a GM/WM probability maps and brain mask of :mod:`raxnet.templates` (the same grid at 1
  or 2 mm; any other grid gets them resampled with ``nilearn.image.resample_to_img``);
* the 300 ROI centres of Seitzman et al. (2020), which ship inside nilearn's wheel with an anatomical
  label each (cortex left/right/midline, hippocampus, amygdala, basal ganglia, thalamus, cerebellum).

The GM template alone cannot tell cortex from deep grey matter (caudate, putamen, thalamus also have
high GM probability, and the template's blurred sulci leave no usable cortical surface), so every brain
voxel takes the anatomical label of its nearest Seitzman ROI centre (a Voronoi parcellation of the
brain). A reference voxel is **cortical** when it is grey-matter dominated (GM >= ``gm_min`` and
GM >= WM) *and* its nearest ROI is cortex or hippocampus; every other brain voxel is **subcortical**
(white matter, basal ganglia, thalamus, amygdala, brainstem, cerebellum). A lesion component is
classed by where its in-brain voxels lie: with ``f`` its cortical fraction it is ``cortical`` if
``f >= 1 - span_fraction``, ``subcortical`` if ``f <= span_fraction`` and ``both`` in between (one
component spanning both substantially). A subject is ``both`` if it has a ``both`` component or
components of both kinds, else the kind of its components; ``none`` without lesion; a component
with no voxel inside the brain mask is ``outside``.

Hemisphere: the sign of x in mm (RAS+: x < 0 is left). ``bilateral`` when the minority side holds at
least ``bilateral_fraction`` of the lesion voxels, else the majority side.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raxnet.components import LESION_CONNECTIVITY, SLICE_CONNECTIVITY, label, structure
from raxnet.io import voxel_spacing
from raxnet.planes import PLANE_AXIS, PLANES, check_plane, to_slices

#: Seitzman ROI labels counted as cortex (hippocampus is allocortex; amygdala is a nucleus).
CORTICAL_REGIONS = frozenset({"cortexL", "cortexR", "cortexMid", "hippocampus"})

#: Default thresholds (the ``[dataset]`` config section overrides them in stage 01).
GM_MIN = 0.3
SPAN_FRACTION = 0.25
BILATERAL_FRACTION = 0.05


def components(mask: np.ndarray, connectivity: int = LESION_CONNECTIVITY) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a binary 3D mask.

    Returns ``(labels, sizes)``: labels renumbered so that label 1 is the largest component (ties by
    first occurrence in C order), 0 background; ``sizes[i]`` is the voxel count of label ``i + 1``,
    sorted descending.
    """
    mask = np.asarray(mask) > 0
    if mask.ndim != 3:
        raise ValueError(f"components expects a 3D mask, got {mask.ndim}D")
    out = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return out, np.zeros(0, dtype=np.int64)
    # Label only the lesion's bounding box: lesions fill a small part of a 1 mm volume.
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    labels, n = label(mask[tuple(box)], connectivity)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[order + 1] = np.arange(1, n + 1, dtype=np.int32)
    out[tuple(box)] = remap[labels]
    return out, sizes[order].astype(np.int64)


def voxel_volume(affine: np.ndarray) -> float:
    """Volume of one voxel in mm³ (|det| of the affine's 3x3 part)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))


# --------------------------------------------------------------------------------------------- reference
@dataclass(frozen=True)
class LocationReference:
    """Boolean maps on one grid: ``brain`` (template brain mask) and ``cortical`` (cortical zone)."""

    brain: np.ndarray
    cortical: np.ndarray
    gm_min: float


def _seitzman() -> tuple[np.ndarray, np.ndarray]:
    from nilearn import datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bunch = datasets.fetch_coords_seitzman_2018()
    xyz = bunch.rois[["x", "y", "z"]].to_numpy(dtype=float)
    regions = np.asarray(bunch.regions, dtype=str)
    return xyz, regions


def atlas_spacing(shape: tuple[int, ...], affine: np.ndarray) -> int | None:
    """1 or 2 if ``(shape, affine)`` is the ATLAS grid at that spacing (template on the same grid), else None.

    Cheaper than :func:`raxnet.templates.spacing_of` for other grids: no template is loaded for them.
    """
    from raxnet import templates

    affine = np.asarray(affine, dtype=float)
    shape = tuple(int(s) for s in shape[:3])
    zooms = np.asarray(voxel_spacing(affine))
    if shape == tuple(templates.ATLAS_SHAPE):
        return 1 if np.allclose(affine, templates.ATLAS_AFFINE, atol=1e-3) else None
    if np.allclose(zooms, 2.0, atol=1e-3):
        grid_shape, grid_affine = templates.grid(2)
        if shape == tuple(grid_shape) and np.allclose(affine, grid_affine, atol=1e-3):
            return 2
    return None


def _template_on_grid(kind: str, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    from raxnet import templates

    spacing = atlas_spacing(shape, affine)
    if spacing is not None:
        return np.asarray(templates.template_data(kind, spacing))
    import nibabel as nib
    from nilearn.image import resample_to_img

    target = nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), affine)
    # Resample from the 2 mm templates when the target is that coarse (8x less work, same information).
    zooms = np.asarray(voxel_spacing(affine))
    src = templates.template(kind, 2 if zooms.min() >= 2 - 1e-3 else 1)
    interp = "nearest" if kind == "brain_mask" else "continuous"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = resample_to_img(src, target, interpolation=interp, force_resample=True, copy_header=True)
    return np.asarray(out.get_fdata(), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _reference_cached(shape: tuple[int, ...], affine_key: tuple[float, ...], gm_min: float) -> LocationReference:
    from scipy.spatial import cKDTree

    affine = np.asarray(affine_key, dtype=float).reshape(4, 4)
    brain = _template_on_grid("brain_mask", shape, affine) > 0.5
    gm = _template_on_grid("gm", shape, affine)
    wm = _template_on_grid("wm", shape, affine)
    candidate = brain & (gm >= gm_min) & (gm >= wm)
    cortical = np.zeros(shape, dtype=bool)
    idx = np.argwhere(candidate)
    if idx.size:
        xyz, regions = _seitzman()
        mm = idx @ affine[:3, :3].T + affine[:3, 3]
        _, nearest = cKDTree(xyz).query(mm, k=1)
        is_cortex = np.isin(regions, list(CORTICAL_REGIONS))[nearest]
        keep = idx[is_cortex]
        cortical[keep[:, 0], keep[:, 1], keep[:, 2]] = True
    brain.setflags(write=False)
    cortical.setflags(write=False)
    return LocationReference(brain=brain, cortical=cortical, gm_min=gm_min)


def location_reference(shape: tuple[int, ...], affine: np.ndarray, gm_min: float = GM_MIN) -> LocationReference:
    """The cortical-zone reference on a grid (cached per grid; ~2-4 s the first time at 1 mm)."""
    key = tuple(float(v) for v in np.round(np.asarray(affine, dtype=float), 6).ravel())
    return _reference_cached(tuple(int(s) for s in shape[:3]), key, float(gm_min))


# --------------------------------------------------------------------------------------------- classes
def hemisphere_from_counts(n_left: int, n_right: int, bilateral_fraction: float = BILATERAL_FRACTION) -> str:
    """left / right / bilateral (the minority side holds >= ``bilateral_fraction``) / midline (no voxels)."""
    total = n_left + n_right
    if total == 0:
        return "midline"
    if min(n_left, n_right) >= bilateral_fraction * total and min(n_left, n_right) > 0:
        return "bilateral"
    return "left" if n_left >= n_right else "right"


def _component_location(n_cortical: int, n_in_brain: int, span_fraction: float) -> str:
    if n_in_brain == 0:
        return "outside"
    f = n_cortical / n_in_brain
    if f >= 1.0 - span_fraction:
        return "cortical"
    if f <= span_fraction:
        return "subcortical"
    return "both"


def _subject_location(kinds: list[str]) -> str:
    kinds_set = set(kinds) - {"outside"}
    if not kinds:
        return "none"
    if not kinds_set:
        return "outside"
    if "both" in kinds_set or {"cortical", "subcortical"} <= kinds_set:
        return "both"
    return kinds_set.pop()


def _per_component(
    labels: np.ndarray, n: int, affine: np.ndarray, reference: LocationReference | None
) -> dict[str, np.ndarray]:
    """Per-label (1..n) voxel counts, centroid in mm, left/right counts, cortical/in-brain counts."""
    affine = np.asarray(affine, dtype=float)
    idx = np.nonzero(labels)
    lab = labels[idx]
    counts = np.bincount(lab, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):  # a label without voxels has no centroid (NaN)
        ijk_mean = np.stack([np.bincount(lab, weights=a, minlength=n + 1)[1:] for a in idx], axis=1) / counts[:, None]
    centroid = ijk_mean @ affine[:3, :3].T + affine[:3, 3]
    x_mm = np.stack(idx, axis=1) @ affine[0, :3] + affine[0, 3]
    left = np.bincount(lab, weights=x_mm < 0, minlength=n + 1)[1:].astype(np.int64)
    right = np.bincount(lab, weights=x_mm > 0, minlength=n + 1)[1:].astype(np.int64)
    out = {"voxels": counts.astype(np.int64), "centroid": centroid, "left": left, "right": right}
    if reference is not None:
        if reference.brain.shape != labels.shape:
            raise ValueError(f"reference grid {reference.brain.shape} does not match mask {labels.shape}")
        out["in_brain"] = np.bincount(lab, weights=reference.brain[idx], minlength=n + 1)[1:].astype(np.int64)
        out["cortical"] = np.bincount(lab, weights=reference.cortical[idx], minlength=n + 1)[1:].astype(np.int64)
    return out


def _reference_for(mask: np.ndarray, affine: np.ndarray, reference: Any, gm_min: float) -> LocationReference | None:
    if reference is False:
        return None
    if isinstance(reference, LocationReference):
        return reference
    return location_reference(mask.shape, affine, gm_min)


def subject_lesion_stats(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    connectivity: int = LESION_CONNECTIVITY,
    reference: LocationReference | bool | None = None,
    gm_min: float = GM_MIN,
    span_fraction: float = SPAN_FRACTION,
    bilateral_fraction: float = BILATERAL_FRACTION,
) -> dict[str, Any]:
    """Lesion statistics of one binary 3D mask (values > 0 are lesion).

    Keys: ``lesion_voxels, lesion_volume_mm3, n_lesions, largest_lesion_voxels, lesion_sizes`` (all
    component sizes, descending, ``;``-joined), ``centroid_{x,y,z}_mm`` (NaN without lesion),
    ``hemisphere`` (left/right/bilateral/none) and ``location`` (cortical/subcortical/both/none; see the
    module docstring). ``reference``: a :class:`LocationReference` for the mask's grid, None to build
    (cached) from the templates, or False to skip location (``location`` is then ``"n/a"``).
    """
    labels, sizes = components(mask, connectivity)
    n = int(sizes.size)
    total = int(sizes.sum())
    stats: dict[str, Any] = {
        "lesion_voxels": total,
        "lesion_volume_mm3": round(total * voxel_volume(affine), 3),
        "n_lesions": n,
        "largest_lesion_voxels": int(sizes[0]) if n else 0,
        "lesion_sizes": ";".join(str(int(s)) for s in sizes),
    }
    if n == 0:
        stats.update(centroid_x_mm=np.nan, centroid_y_mm=np.nan, centroid_z_mm=np.nan, hemisphere="none")
        stats["location"] = "none" if reference is not False else "n/a"
        return stats
    ref = _reference_for(labels, affine, reference, gm_min)
    comp = _per_component(labels, n, affine, ref)
    centroid = (comp["centroid"] * comp["voxels"][:, None]).sum(axis=0) / total
    stats.update(
        centroid_x_mm=round(float(centroid[0]), 3),
        centroid_y_mm=round(float(centroid[1]), 3),
        centroid_z_mm=round(float(centroid[2]), 3),
        hemisphere=hemisphere_from_counts(int(comp["left"].sum()), int(comp["right"].sum()), bilateral_fraction),
    )
    if ref is None:
        stats["location"] = "n/a"
    else:
        kinds = [
            _component_location(int(c), int(b), span_fraction) for c, b in zip(comp["cortical"], comp["in_brain"])
        ]
        stats["location"] = _subject_location(kinds)
    return stats


COMPONENT_COLUMNS = [
    "label", "voxels", "volume_mm3", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "cortical_fraction", "hemisphere", "location",
]  # fmt: skip


def component_table(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    connectivity: int = LESION_CONNECTIVITY,
    reference: LocationReference | bool | None = None,
    gm_min: float = GM_MIN,
    span_fraction: float = SPAN_FRACTION,
    bilateral_fraction: float = BILATERAL_FRACTION,
) -> pd.DataFrame:
    """One row per 3D component, largest first (label 1 = largest, as in :func:`components`).

    Columns: ``label, voxels, volume_mm3, centroid_{x,y,z}_mm, cortical_fraction`` (share of its
    in-brain voxels in the cortical zone; NaN when skipped/outside), ``hemisphere, location``.
    """
    labels, sizes = components(mask, connectivity)
    return label_table(labels, int(sizes.size), affine, reference=reference, gm_min=gm_min,
                       span_fraction=span_fraction, bilateral_fraction=bilateral_fraction)


def label_table(
    labels: np.ndarray,
    n: int,
    affine: np.ndarray,
    *,
    reference: LocationReference | bool | None = None,
    gm_min: float = GM_MIN,
    span_fraction: float = SPAN_FRACTION,
    bilateral_fraction: float = BILATERAL_FRACTION,
) -> pd.DataFrame:
    """:func:`component_table` for a given label image (labels 1..n; a label may have no voxels, e.g.
    after resampling: its row then has 0 voxels and NaN centroid)."""
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COMPONENT_COLUMNS})
    ref = _reference_for(labels, affine, reference, gm_min)
    comp = _per_component(labels, n, affine, ref)
    vv = voxel_volume(affine)
    rows = []
    for i in range(n):
        row = {
            "label": i + 1,
            "voxels": int(comp["voxels"][i]),
            "volume_mm3": round(float(comp["voxels"][i]) * vv, 3),
            "centroid_x_mm": round(float(comp["centroid"][i, 0]), 3),
            "centroid_y_mm": round(float(comp["centroid"][i, 1]), 3),
            "centroid_z_mm": round(float(comp["centroid"][i, 2]), 3),
            "hemisphere": hemisphere_from_counts(int(comp["left"][i]), int(comp["right"][i]), bilateral_fraction),
        }
        if ref is None:
            row.update(cortical_fraction=np.nan, location="n/a")
        else:
            b, c = int(comp["in_brain"][i]), int(comp["cortical"][i])
            row.update(
                cortical_fraction=round(c / b, 4) if b else np.nan,
                location=_component_location(c, b, span_fraction),
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPONENT_COLUMNS)


# --------------------------------------------------------------------------------------------- slices
SLICE_COLUMNS = ["slice", "lesion_pixels", "n_lesions", "brain_pixels"]


def slice_stats(mask: np.ndarray, plane: str, brain: np.ndarray | None = None,
                connectivity: int = SLICE_CONNECTIVITY) -> pd.DataFrame:
    """Per-slice lesion counts for every slice of ``plane`` (lesion-free slices included).

    Columns: ``slice`` (index along the plane's axis: sagittal 0, coronal 1, axial 2), ``lesion_pixels``,
    ``n_lesions`` (2D components, 8- or 4-connectivity) and ``brain_pixels`` (pixels of ``brain``, a 3D
    boolean brain mask on the same grid; ``<NA>`` when None). Stage 01 passes the template brain mask
    on the ATLAS grid (ATLAS T1s are not skull-stripped) and the T1 foreground elsewhere.
    """
    axis = PLANE_AXIS[check_plane(plane)]
    others = tuple(a for a in range(3) if a != axis)
    mask = np.asarray(mask) > 0
    stack = to_slices(mask, plane)
    n = stack.shape[0]
    lesion = np.count_nonzero(mask, axis=others).astype(np.int64)
    structure(connectivity, 2)  # refuses a bad value even when no slice holds lesion
    n_les = np.zeros(n, dtype=np.int64)
    for i in np.flatnonzero(lesion):
        n_les[i] = label(stack[i], connectivity)[1]
    if brain is not None:
        if np.shape(brain) != mask.shape:
            raise ValueError(f"brain mask shape {np.shape(brain)} does not match mask {mask.shape}")
        brain_px = pd.array(np.count_nonzero(brain, axis=others).astype(np.int64), dtype="Int64")
    else:
        brain_px = pd.array([pd.NA] * n, dtype="Int64")
    return pd.DataFrame(
        {"slice": np.arange(n, dtype=np.int64), "lesion_pixels": lesion, "n_lesions": n_les, "brain_pixels": brain_px}
    )


def all_slice_stats(mask: np.ndarray, brain: np.ndarray | None = None,
                    connectivity: int = SLICE_CONNECTIVITY) -> dict[str, pd.DataFrame]:
    """:func:`slice_stats` for the three planes."""
    return {p: slice_stats(mask, p, brain, connectivity) for p in PLANES}
