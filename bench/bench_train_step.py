#!/usr/bin/env python
"""Training throughput at 1 mm: model train-step time vs. the stage-05 input pipeline's batches/s.

For each model (full-size ``[model]`` defaults unless overridden) at the axial 1 mm input (197x233 slices
padded to 208x240), one compiled train step (``train_on_batch``, Adam, the default tversky_focal loss) is
timed after warm-up; the input pipeline is :func:`raxnet.batches.build_training_sets` on synthetic
full-size stage-03 stacks written to a temporary work dir (balanced lesion/normal batches read from the
memory maps, padded). The pipeline must deliver >= 10x the batches/s the model consumes, or the
accelerator would wait for data.

    python bench/bench_train_step.py [--models raxnet,unet] [--batch-size 16] [--steps 5] [--width 32]
                                     [--mixed-precision] [--xla] [--json]

Note: the synthetic stacks were just written, so they are read from the page cache (a warm cache); on a
machine whose RAM cannot hold the stacks the pipeline reads from disk and is slower.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

from raxnet.planes import padded_shape, to_slices

VOLUME = (197, 233, 189)
PLANE = "axial"


def make_stacks(work: Path, n_subjects: int, seed: int = 0) -> None:
    """Full-size synthetic axial stage-03 stacks + stage-04 tables (3 folds; every lesion slice listed)."""
    rng = np.random.default_rng(seed)
    conv = work / "03_moving_converting" / PLANE
    conv.mkdir(parents=True, exist_ok=True)
    (work / "04_cross_validation").mkdir(parents=True, exist_ok=True)
    index, rows = [], []
    zz, yy, xx = np.ogrid[: VOLUME[0], : VOLUME[1], : VOLUME[2]]
    head = ((zz - 98) / 80.0) ** 2 + ((yy - 116) / 100.0) ** 2 + ((xx - 90) / 80.0) ** 2 <= 1.0
    for i in range(n_subjects):
        subject = f"sub-b{i:03d}"
        vol = np.where(head, 0.5 + 0.1 * rng.standard_normal(VOLUME, dtype=np.float32), 0.0)
        c = rng.integers([60, 70, 60], [140, 160, 130])
        mask = (((zz - c[0]) / 12.0) ** 2 + ((yy - c[1]) / 15.0) ** 2 + ((xx - c[2]) / 10.0) ** 2 <= 1.0) & head
        img = np.ascontiguousarray(to_slices(vol, PLANE), dtype=np.float16)
        msk = np.ascontiguousarray(to_slices(mask, PLANE), dtype=np.uint8)
        np.save(conv / f"{subject}_image.npy", img)
        np.save(conv / f"{subject}_mask.npy", msk)
        n, h, w = img.shape
        index.append({"subject": subject, "set": "train", "plane": PLANE, "n_slices": n, "height": h, "width": w,
                      "image_path": f"{PLANE}/{subject}_image.npy", "mask_path": f"{PLANE}/{subject}_mask.npy"})
        pixels = msk.reshape(n, -1).sum(axis=1)
        brain = img.reshape(n, -1).max(axis=1) > 0
        lesion = np.flatnonzero(pixels > 0)
        normal = rng.choice(np.flatnonzero((pixels == 0) & brain), size=lesion.size, replace=False)
        for k in lesion:
            rows.append((subject, int(k), 1 + i % 3, "lesion", int(pixels[k]), "(0, 200]" if pixels[k] <= 200 else "(200, inf]"))
        for k in normal:
            rows.append((subject, int(k), 1 + i % 3, "normal", 0, ""))
    pd.DataFrame(index).to_csv(work / "03_moving_converting" / "index.csv", index=False)
    subj = pd.DataFrame({"subject": [r["subject"] for r in index], "fold": [1 + i % 3 for i in range(n_subjects)]})
    subj.to_csv(work / "04_cross_validation" / "subject_folds.csv", index=False)
    pd.DataFrame(rows, columns=["subject", "slice", "fold", "kind", "lesion_pixels", "area_bin"]).to_csv(
        work / "04_cross_validation" / f"{PLANE}_folds.csv", index=False)


def pipeline_rate(work: Path, batch_size: int, depth: int, n_batches: int, seed: int) -> dict:
    """Batches/s of the stage-05 training PyDataset (first epoch, then following epochs)."""
    from raxnet import batches

    cfg = {"arrays": {"batch_size": batch_size}}
    run = {"work_dir": str(work), "seed": seed}
    sets = batches.build_training_sets(cfg, run, PLANE, 1, depth)
    ds = sets.train
    x, y = ds[0]
    assert x.shape == (batch_size, *sets.input_shape) and y.shape == x.shape
    done, t0 = 0, time.perf_counter()
    while done < n_batches:
        for i in range(len(ds)):
            ds[i]
            done += 1
            if done >= n_batches:
                break
        ds.on_epoch_end()
    seconds = time.perf_counter() - t0
    return {"batches": done, "seconds": seconds, "batches_per_s": done / seconds, "input_shape": sets.input_shape,
            "steps_per_epoch": len(ds)}


def train_step_time(name: str, input_shape: tuple, batch_size: int, width: int, depth: int, steps: int,
                    loss: str, xla: bool) -> dict:
    """Seconds per compiled train step (median of ``steps`` after 2 warm-up steps)."""
    import keras

    from raxnet import losses, models

    keras.utils.set_random_seed(0)
    model = models.build_model(name, input_shape, width=width, depth=depth)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.get_loss(loss),
                  **({"jit_compile": True} if xla else {}))
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, *input_shape), dtype=np.float32)
    y = (rng.random((batch_size, *input_shape)) > 0.95).astype(np.float32)
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - t0
    model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    params = int(model.count_params())
    del model
    keras.backend.clear_session()
    return {"model": name, "params": params, "first_step_s": first, "step_s": float(np.median(times))}


def main(argv: list[str] | None = None) -> int:
    from raxnet import models

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(models.MODEL_NAMES))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed train steps per model")
    p.add_argument("--width", type=int, default=models.DEFAULTS["width"])
    p.add_argument("--depth", type=int, default=models.DEFAULTS["depth"])
    p.add_argument("--loss", default="tversky_focal")
    p.add_argument("--subjects", type=int, default=12, help="synthetic full-size subjects for the pipeline")
    p.add_argument("--pipeline-batches", type=int, default=200)
    p.add_argument("--mixed-precision", action="store_true")
    p.add_argument("--xla", action="store_true")
    p.add_argument("--work-dir", help="keep the synthetic stacks here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)

    import keras

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        t0 = time.perf_counter()
        make_stacks(work, args.subjects)
        write_s = time.perf_counter() - t0
        pipe = pipeline_rate(work, args.batch_size, args.depth, args.pipeline_batches, seed=0)
    shape = padded_shape(VOLUME[:2], args.depth)
    input_shape = (*shape, 1)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = train_step_time(name, input_shape, args.batch_size, args.width, args.depth, args.steps, args.loss,
                            args.xla)
        r["model_batches_per_s"] = 1.0 / r["step_s"]
        r["pipeline_over_model"] = pipe["batches_per_s"] / r["model_batches_per_s"]
        rows.append(r)
        print(f"  {name}: {r['step_s']:.3f} s/step", file=sys.stderr, flush=True)
    devices = [d.device_type for d in __import__("tensorflow").config.list_physical_devices()]
    result = {
        "input_shape": list(input_shape), "batch_size": args.batch_size, "width": args.width, "depth": args.depth,
        "mixed_precision": args.mixed_precision, "xla": args.xla, "devices": devices, "cpu_count": os.cpu_count(),
        "pipeline": {**pipe, "input_shape": list(pipe["input_shape"]), "subjects": args.subjects,
                     "stack_write_s": write_s},
        "models": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"input {tuple(input_shape)}, batch {args.batch_size}, width {args.width}, depth {args.depth}, "
          f"devices {sorted(set(devices))}, {os.cpu_count()} CPU cores"
          f"{', mixed_float16' if args.mixed_precision else ''}{', XLA' if args.xla else ''}")
    print(f"input pipeline (raxnet.batches, {args.subjects} synthetic subjects, warm page cache): "
          f"{pipe['batches_per_s']:.1f} batches/s over {pipe['batches']} batches")
    print(f"{'model':<16}{'s/step':>10}{'batches/s':>12}{'pipeline/model':>16}{'first step s':>14}")
    for r in rows:
        print(f"{r['model']:<16}{r['step_s']:>10.3f}{r['model_batches_per_s']:>12.2f}"
              f"{r['pipeline_over_model']:>15.1f}x{r['first_step_s']:>14.1f}")
    worst = min(r["pipeline_over_model"] for r in rows)
    print(f"pipeline / fastest model = {worst:.1f}x ({'OK' if worst >= 10 else 'BELOW'} the 10x target)")
    return 0 if worst >= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
