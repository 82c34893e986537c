"""The real ATLAS v2.0 lesion tables (no images) in the form stage 01 writes.

``shared/atlas_reference/`` holds the lesion statistics of the 655 labelled ATLAS v2.0 training subjects
(per subject, and per lesion-containing slice in each plane). :func:`reference_to_stage01` turns them into
``<work>/01_dataset/subjects.csv`` and ``slices_{axial,sagittal,coronal}.csv`` so that stages 02 and 04
can run, and be tested, at the real scale and on the real heavy-tailed lesion distribution:

* ``subjects.csv``: image paths are empty (there are no images); ``lesion_volume_mm3`` = ``lesion_voxels``
  (1 mm grid); the lesion centroid is exact, computed from the per-slice lesion areas (the centroid along
  an axis is the area-weighted mean slice index of the plane that slices that axis), converted to mm with
  the ATLAS affine; ``hemisphere`` follows stage 01's rule (``raxnet.lesions``: ``bilateral`` if the
  minority side holds >= 5 % of the lesion voxels, else the majority side), exact from the sagittal areas;
  per-lesion sizes, ``location`` and ``shape`` are not in the tables and stay empty.
* ``slices_<plane>.csv``: every slice of every subject (lesion-free slices get ``lesion_pixels`` 0);
  ``brain_pixels`` is the slice's area in nilearn's MNI152 2009a brain mask, the same for every subject
  since all ATLAS images are in that space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raxnet.config import stage_dir
from raxnet.errors import StageInputError
from raxnet.io import save_csv
from raxnet.log import get_logger
from raxnet.planes import PLANE_AXIS, PLANES

log = get_logger(__name__)

SUBJECTS_FILE = "atlas_v2_subject_lesions.csv"
SLICES_FILE = "atlas_v2_lesion_slices_{plane}.csv"

SUBJECT_COLUMNS = [
    "subject", "site", "t1_path", "mask_path", "lesion_voxels", "lesion_volume_mm3", "n_lesions",
    "largest_lesion_voxels", "lesion_sizes", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "hemisphere", "location", "shape", "spacing_mm",
]
SLICE_COLUMNS = ["subject", "slice", "lesion_pixels", "n_lesions", "brain_pixels"]


def default_reference_dir() -> Path:
    """``<repo>/../shared/atlas_reference`` (CI clones the repository with ``shared/`` beside it)."""
    return Path(__file__).resolve().parents[2] / "shared" / "atlas_reference"


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise StageInputError(f"{path}: not found")
    df = pd.read_csv(path, dtype={"subject": str, "site": str})
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StageInputError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def load_reference(reference_dir: str | Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Read the reference subject table and the three lesion-slice tables (validated)."""
    ref = Path(reference_dir)
    subjects = _read(ref / SUBJECTS_FILE, ["subject", "site", "lesion_voxels", "n_lesions", "largest_lesion_voxels"])
    lesion_slices = {}
    known = set(subjects["subject"])
    for plane in PLANES:
        path = ref / SLICES_FILE.format(plane=plane)
        df = _read(path, ["subject", "slice", "lesion_pixels", "n_lesions"])
        unknown = set(df["subject"]) - known
        if unknown:
            raise StageInputError(f"{path}: subject(s) not in {SUBJECTS_FILE}: {', '.join(sorted(unknown)[:5])}")
        # Each plane's slices partition the lesion: its per-subject area sum is the lesion volume.
        sums = df.groupby("subject")["lesion_pixels"].sum()
        vox = subjects.set_index("subject")["lesion_voxels"]
        bad = sums.reindex(vox.index, fill_value=0) != vox
        if bad.any():
            raise StageInputError(f"{path}: lesion areas do not add up to lesion_voxels for "
                                  f"{', '.join(vox.index[bad][:5])}")
        lesion_slices[plane] = df
    return subjects, lesion_slices


def brain_pixels_per_slice(spacing: int = 1) -> dict[str, np.ndarray]:
    """Brain-mask area (pixels) of every slice of each plane, from nilearn's MNI152 brain mask."""
    from raxnet.templates import template_data

    mask = template_data("brain_mask", spacing) > 0
    return {
        plane: mask.sum(axis=tuple(a for a in range(3) if a != PLANE_AXIS[plane])).astype(np.int64)
        for plane in PLANES
    }


def reference_to_stage01(reference_dir: str | Path, work_dir: str | Path) -> dict[str, Any]:
    """Write the reference tables as stage-01 outputs under ``<work_dir>/01_dataset/``; returns paths."""
    from raxnet.templates import ATLAS_AFFINE, ATLAS_SHAPE

    subjects, lesion_slices = load_reference(reference_dir)
    subjects = subjects.sort_values("subject", kind="stable").reset_index(drop=True)
    brain = brain_pixels_per_slice(1)
    out_dir = stage_dir(work_dir, "dataset", create=True)
    origin = ATLAS_AFFINE[:3, 3]

    table = subjects[["subject", "site", "lesion_voxels", "n_lesions", "largest_lesion_voxels"]].copy()
    table["t1_path"] = ""
    table["mask_path"] = ""
    table["lesion_volume_mm3"] = table["lesion_voxels"].astype(float)
    table["lesion_sizes"] = ""
    for axis_name, axis in (("x", 0), ("y", 1), ("z", 2)):
        plane = next(p for p, a in PLANE_AXIS.items() if a == axis)
        df = lesion_slices[plane]
        weighted = (df["slice"] * df["lesion_pixels"]).groupby(df["subject"]).sum()
        area = df.groupby("subject")["lesion_pixels"].sum()
        centre = (weighted / area).reindex(table["subject"]).to_numpy(float)
        table[f"centroid_{axis_name}_mm"] = np.round(centre * ATLAS_AFFINE[axis, axis] + origin[axis], 2)
    # Stage 01's rule (raxnet.lesions), exact from the sagittal areas: a sagittal slice is one x.
    from raxnet.lesions import BILATERAL_FRACTION, hemisphere_from_counts

    sag = lesion_slices["sagittal"]
    x_mm = sag["slice"] * ATLAS_AFFINE[0, 0] + origin[0]
    left = sag["lesion_pixels"].where(x_mm < 0, 0).groupby(sag["subject"]).sum()
    right = sag["lesion_pixels"].where(x_mm > 0, 0).groupby(sag["subject"]).sum()
    table["hemisphere"] = [
        hemisphere_from_counts(int(left.get(s, 0)), int(right.get(s, 0)), BILATERAL_FRACTION) for s in table["subject"]
    ]
    table["location"] = ""
    table["shape"] = ""
    table["spacing_mm"] = 1.0
    paths = {"subjects": save_csv(table[SUBJECT_COLUMNS], out_dir / "subjects.csv")}

    names = table["subject"].to_numpy()
    for plane in PLANES:
        n = ATLAS_SHAPE[PLANE_AXIS[plane]]
        ls = lesion_slices[plane]["slice"]
        if len(ls) and (ls.min() < 0 or ls.max() >= n):
            raise StageInputError(f"{reference_dir}: {plane} slice indices outside 0..{n - 1}")
        full = pd.DataFrame({
            "subject": np.repeat(names, n),
            "slice": np.tile(np.arange(n, dtype=np.int64), len(names)),
        })
        full = full.merge(lesion_slices[plane][["subject", "slice", "lesion_pixels", "n_lesions"]],
                          on=["subject", "slice"], how="left", validate="one_to_one")
        full[["lesion_pixels", "n_lesions"]] = full[["lesion_pixels", "n_lesions"]].fillna(0).astype(np.int64)
        full["brain_pixels"] = np.tile(brain[plane], len(names))
        paths[plane] = save_csv(full[SLICE_COLUMNS], out_dir / f"slices_{plane}.csv")
    log.info("reference tables -> %s (%d subjects)", out_dir, len(table))
    return {"subjects_csv": str(paths["subjects"]),
            **{f"slices_{p}_csv": str(paths[p]) for p in PLANES}, "n_subjects": len(table)}
