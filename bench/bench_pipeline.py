#!/usr/bin/env python
"""Benchmark stage 05 at 1 mm axial, batch 16: batches/s (one worker, worker threads, worker processes)
and peak resident memory for a small vs a 4x larger training set (must not grow with the subjects).

Stacks are written with the real 1 mm axial shape (189 slices of 197x233, float16 image + uint8 mask);
the lesion slices and their areas are the real ones of the first N ATLAS subjects
(``shared/atlas_reference/atlas_v2_lesion_slices_axial.csv``; a lognormal stand-in if that folder is
absent), binned with stage 04's default axial area edges, plus as many lesion-free normal slices per
subject (stage 04's default ``normal_ratio = 1``). Every measurement runs in a fresh subprocess that
iterates one whole epoch (every training batch) and reports ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHAPE = (189, 197, 233)  # axial stack of the 197x233x189 volume: (n_slices, H, W)
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "atlas_reference" / "atlas_v2_lesion_slices_axial.csv"


def _lesion_table(n: int, seed: int) -> pd.DataFrame:
    if REFERENCE.is_file():
        ref = pd.read_csv(REFERENCE)
        keep = sorted(ref["subject"].unique())[:n]
        return ref[ref["subject"].isin(keep)][["subject", "slice", "lesion_pixels"]]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        start, k = int(rng.integers(40, 120)), int(rng.integers(5, 60))
        rows += [{"subject": f"sub-{i:03d}", "slice": s, "lesion_pixels": int(rng.lognormal(5, 1.2)) + 1}
                 for s in range(start, start + k)]
    return pd.DataFrame(rows)


def make_work(work: Path, n: int, seed: int) -> None:
    """Stage 03 + 04 outputs for ``n`` subjects, 5 folds, axial only."""
    from raxnet.folds import DEFAULTS as FOLD_DEFAULTS
    from raxnet.splitting import assign_bins, bin_labels

    rng = np.random.default_rng(seed)
    les = _lesion_table(n, seed)
    subjects = sorted(les["subject"].unique())
    edges = FOLD_DEFAULTS["area_bin_edges"]["axial"]
    labels = bin_labels(edges)
    stage03 = work / "03_moving_converting" / "axial"
    stage03.mkdir(parents=True)
    (work / "04_cross_validation").mkdir()
    image = rng.random(SHAPE, dtype=np.float32).astype(np.float16)
    idx, folds, rows = [], [], []
    for i, sub in enumerate(subjects):
        mine = les[les["subject"] == sub]
        mask = np.zeros(SHAPE, np.uint8)
        for s, px in zip(mine["slice"], mine["lesion_pixels"]):
            mask[s].flat[: int(px)] = 1
        np.save(stage03 / f"{sub}_image.npy", image)
        np.save(stage03 / f"{sub}_mask.npy", mask)
        idx.append({"subject": sub, "set": "train", "plane": "axial", "n_slices": SHAPE[0], "height": SHAPE[1],
                    "width": SHAPE[2], "image_path": f"axial/{sub}_image.npy", "mask_path": f"axial/{sub}_mask.npy"})
        fold = 1 + i % 5
        folds.append({"subject": sub, "fold": fold})
        bins = assign_bins(mine["lesion_pixels"].to_numpy(), edges)
        rows += [{"subject": sub, "slice": int(s), "fold": fold, "kind": "lesion", "lesion_pixels": int(px),
                  "area_bin": labels[b]} for s, px, b in zip(mine["slice"], mine["lesion_pixels"], bins)]
        free = np.setdiff1d(np.arange(30, 160), mine["slice"].to_numpy())
        for s in rng.choice(free, size=min(len(free), len(mine)), replace=False):
            rows.append({"subject": sub, "slice": int(s), "fold": fold, "kind": "normal", "lesion_pixels": 0,
                         "area_bin": ""})
    pd.DataFrame(idx).to_csv(work / "03_moving_converting" / "index.csv", index=False)
    pd.DataFrame(folds).to_csv(work / "04_cross_validation" / "subject_folds.csv", index=False)
    pd.DataFrame(rows).to_csv(work / "04_cross_validation" / "axial_folds.csv", index=False)


def child(work: str, workers: int, processes: bool, max_batches: int, augment: bool) -> dict:
    """Runs in a fresh process: one epoch (or ``max_batches``) through the Keras PyDataset adapter."""
    import psutil

    from raxnet.batches import build_training_sets

    cfg = {"arrays": {"batch_size": 16, "workers": workers, "use_multiprocessing": processes, "augment": augment}}
    sets = build_training_sets(cfg, {"work_dir": work, "seed": 0}, "axial", fold=1, depth=4)
    ds = sets.train
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    rss_before = psutil.Process().memory_info().rss
    n = min(len(ds), max_batches) if max_batches else len(ds)
    adapter = PyDatasetAdapter(ds, shuffle=False)
    adapter.on_epoch_begin()
    t0 = time.perf_counter()
    got = 0
    for x, y in adapter.get_numpy_iterator():
        assert x.shape == (16, *sets.input_shape)
        got += 1
        if got >= n:
            break
    dt = time.perf_counter() - t0
    adapter.on_epoch_end()
    return {"batches": got, "seconds": dt, "batches_per_s": got / dt, "steps_per_epoch": len(ds),
            "train_subjects": int((sets.subjects.role == "train").sum()),
            "rss_before_mib": rss_before / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "input_shape": list(sets.input_shape)}


def _spawn(work: Path, workers: int, processes: bool, max_batches: int, augment: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", str(work), "--workers", str(workers), "--max-batches",
           str(max_batches)] + (["--processes"] if processes else []) + (["--augment"] if augment else [])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--large", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--processes", action="store_true")
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--max-batches", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workers, args.processes, args.max_batches, args.augment)))
        return
    print(f"lesion slices from {'real ATLAS table' if REFERENCE.is_file() else 'lognormal stand-in'}; "
          f"cpu cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for n in (args.small, args.large):
            w = Path(tmp) / f"w{n}"
            t0 = time.perf_counter()
            make_work(w, n, args.seed)
            print(f"{n} subjects written in {time.perf_counter() - t0:.1f} s")
            res[n] = _spawn(w, 1, False, 0)
            r = res[n]
            print(f"{n:3d} subjects ({r['train_subjects']} train): full epoch {r['steps_per_epoch']} batches of 16 "
                  f"{tuple(r['input_shape'])} in {r['seconds']:.1f} s = {r['batches_per_s']:.1f} batches/s (1 worker); "
                  f"RSS after set-up {r['rss_before_mib']:.0f} MiB, peak RSS {r['peak_rss_mib']:.0f} MiB")
        big = Path(tmp) / f"w{args.large}"
        for workers, proc, aug in ((2, False, False), (2, True, False), (1, False, True), (2, True, True)):
            r = _spawn(big, workers, proc, 200, aug)
            kind = "processes" if proc else "threads" if workers > 1 else "main thread"
            print(f"{workers} worker(s) ({kind}){' + augmentation' if aug else ''}: {r['batches']} batches in "
                  f"{r['seconds']:.1f} s = {r['batches_per_s']:.1f} batches/s, peak RSS {r['peak_rss_mib']:.0f} MiB")
        growth = res[args.large]["peak_rss_mib"] - res[args.small]["peak_rss_mib"]
        print(f"peak RSS {args.large} vs {args.small} subjects: {growth:+.0f} MiB "
              f"({'bounded' if growth < 100 else 'GROWS'}; stacks on disk: "
              f"{args.large * (np.prod(SHAPE) * 3) / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
