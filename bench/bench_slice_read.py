#!/usr/bin/env python
"""Benchmark stage 03 at 1 mm: conversion time, disk footprint per subject, random single-slice reads.

Writes N real-size subjects (MNI152 2009a template T1 on the 197x233x189 ATLAS grid, scaled to int16,
plus one random ball lesion each) to a temp folder, converts them with ``raxnet.slices.convert`` and
then reads ``--reads`` random (subject, plane, slice) pairs from the memory-mapped stacks, as the
training batches do. Reports the median / p95 time of one slice read (memmaps already open, and with
the ``np.load(mmap_mode='r')`` open included), the bytes per subject and the extrapolation to 655
subjects. The page cache is warm (the stacks were just written), as it is during training once the
stacks have been read once.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from raxnet import templates
from raxnet.planes import PLANES
from raxnet.slices import convert, open_stack, stack_paths


def make_subjects(root: Path, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t1 = (np.asarray(templates.template_data("t1", 1)) * 1000).astype(np.int16)
    brain = np.argwhere(templates.template_data("brain_mask", 1) > 0)
    grids = np.ogrid[tuple(slice(0, s) for s in templates.ATLAS_SHAPE)]
    rows = []
    for i in range(n):
        sub = f"sub-r001s{i + 1:03d}"
        noisy = (t1 + rng.normal(0, 20, t1.shape) * (t1 > 0)).astype(np.int16)
        mask = np.zeros(templates.ATLAS_SHAPE, np.uint8)
        c, r = brain[rng.integers(len(brain))], rng.uniform(5, 15)
        mask[sum((g - cc) ** 2 for g, cc in zip(grids, c)) <= r * r] = 1
        t1p, mp = root / f"{sub}_T1w.nii.gz", root / f"{sub}_mask.nii.gz"
        nib.save(nib.Nifti1Image(noisy, templates.ATLAS_AFFINE), str(t1p))
        nib.save(nib.Nifti1Image(mask, templates.ATLAS_AFFINE), str(mp))
        rows.append({"subject": sub, "site": "R001", "t1_path": str(t1p), "mask_path": str(mp),
                     "lesion_voxels": int(mask.sum()), "spacing_mm": 1})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        subjects = make_subjects(tmp / "data", args.subjects, args.seed)
        work = tmp / "work"
        (work / "01_dataset").mkdir(parents=True)
        (work / "02_data_splitting").mkdir()
        subjects.to_csv(work / "01_dataset" / "subjects.csv", index=False)
        split = subjects[["subject", "site", "lesion_voxels"]].assign(volume_bin="b", set="train")
        split.to_csv(work / "02_data_splitting" / "split.csv", index=False)
        run = {"work_dir": str(work), "data_root": str(tmp / "data"), "seed": 0, "jobs": 1}

        t0 = time.perf_counter()
        index = convert({}, run)
        t_convert = time.perf_counter() - t0
        t0 = time.perf_counter()
        convert({}, run)
        t_resume = time.perf_counter() - t0
        stage = work / "03_moving_converting"
        per_subject = {s: sum(p.stat().st_size for pl in PLANES for p in stack_paths(stage, s, pl))
                       for s in index["subject"].unique()}
        nbytes = float(np.mean(list(per_subject.values())))

        rng = np.random.default_rng(args.seed)
        subs = sorted(per_subject)
        picks = [(subs[rng.integers(len(subs))], PLANES[rng.integers(3)]) for _ in range(args.reads)]
        opened = {(s, p): open_stack(stage, s, p) for s in subs for p in PLANES}
        warm, cold = [], []
        for s, p in picks:
            img, msk = opened[(s, p)]
            k = int(rng.integers(img.shape[0]))
            t0 = time.perf_counter()
            x = np.asarray(img[k], dtype=np.float32)
            y = np.asarray(msk[k], dtype=np.float32)
            warm.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            img2, msk2 = open_stack(stage, s, p)
            x = np.asarray(img2[k], dtype=np.float32)
            y = np.asarray(msk2[k], dtype=np.float32)
            cold.append(time.perf_counter() - t0)
            del img2, msk2
        assert x.shape == y.shape
        warm_ms, cold_ms = np.asarray(warm) * 1e3, np.asarray(cold) * 1e3
        print(f"subjects: {args.subjects} at 1 mm {templates.ATLAS_SHAPE}, planes {', '.join(PLANES)}")
        print(f"convert: {t_convert:.1f} s total, {t_convert / args.subjects:.2f} s/subject (1 job); "
              f"re-run skipping all: {t_resume:.2f} s")
        print(f"disk per subject (3 planes, image float16 + mask uint8): {nbytes / 2**20:.1f} MiB; "
              f"655 subjects: {nbytes * 655 / 2**30:.1f} GiB (train only, 524: {nbytes * 524 / 2**30:.1f} GiB)")
        print(f"one random slice (image + mask -> float32), memmap open:    median {np.median(warm_ms):.3f} ms, "
              f"p95 {np.percentile(warm_ms, 95):.3f} ms over {args.reads} reads")
        print(f"one random slice incl. np.load(mmap_mode='r') of both:      median {np.median(cold_ms):.3f} ms, "
              f"p95 {np.percentile(cold_ms, 95):.3f} ms")
        print(f"PASS (< 1 ms median)" if np.median(warm_ms) < 1.0 else "FAIL (median >= 1 ms)")


if __name__ == "__main__":
    main()
