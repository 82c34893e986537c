#!/usr/bin/env python
"""Benchmark stage 01 at 1 mm: subjects per second per core on generated ATLAS-grid subjects.

Writes N subjects (template T1 + hand-made spherical lesions, on the real 197x233x189 grid) to a temp
folder, runs the stage once with --jobs 1 (the first run also builds the location reference, timed
separately) and prints the measured throughput.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from raxnet import dataset_info, lesions, templates
from raxnet.atlas import MASK_SUFFIX, T1_SUFFIX


def make_tree(root: Path, n: int, seed: int) -> None:
    """``n`` subjects at 1 mm: template T1 x 1000 and 1-3 random balls inside the brain as lesions."""
    rng = np.random.default_rng(seed)
    t1 = (np.asarray(templates.template_data("t1", 1)) * 1000).astype(np.int16)
    brain = np.argwhere(templates.template_data("brain_mask", 1) > 0)
    grids = np.ogrid[tuple(slice(0, s) for s in templates.ATLAS_SHAPE)]
    for i in range(n):
        sub = f"sub-r001s{i + 1:03d}"
        anat = root / "Training" / "R001" / sub / "ses-1" / "anat"
        anat.mkdir(parents=True)
        mask = np.zeros(templates.ATLAS_SHAPE, np.uint8)
        for _ in range(rng.integers(1, 4)):
            c = brain[rng.integers(len(brain))]
            r = rng.uniform(3, 15)
            mask[sum((g - cc) ** 2 for g, cc in zip(grids, c)) <= r * r] = 1
        nib.save(nib.Nifti1Image(t1, templates.ATLAS_AFFINE), str(anat / f"{sub}_ses-1{T1_SUFFIX}.nii.gz"))
        nib.save(nib.Nifti1Image(mask, templates.ATLAS_AFFINE), str(anat / f"{sub}_ses-1{MASK_SUFFIX}.nii.gz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ATLAS_2"
        make_tree(root, args.subjects, args.seed)
        t0 = time.perf_counter()
        lesions.location_reference(templates.ATLAS_SHAPE, templates.ATLAS_AFFINE)
        t_ref = time.perf_counter() - t0
        rows = dataset_info.discover(root).to_dict("records")
        t0 = time.perf_counter()
        for row in rows:
            dataset_info.process_subject(row)
        t_sub = (time.perf_counter() - t0) / len(rows)
        t0 = time.perf_counter()
        dataset_info.run({}, {"data_root": str(root), "work_dir": str(Path(tmp) / "work"), "jobs": 1})
        t_stage = time.perf_counter() - t0
    print(f"location reference (once per grid): {t_ref:.2f} s")
    print(f"process_subject at 1 mm: {t_sub:.3f} s/subject = {1 / t_sub:.2f} subjects/s on one core")
    print(f"whole stage, {len(rows)} subjects, --jobs 1 (incl. figures): {t_stage:.2f} s")


if __name__ == "__main__":
    main()
