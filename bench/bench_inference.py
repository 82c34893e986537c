"""Inference speed at 1 mm: `raxnet predict`'s batched three-plane prediction + fusion vs the original's way.

On a 197x233x189 volume with the full-size networks of configs/atlas.toml (random weights: timing only):
  * batched: raxnet.predict's path (normalise, predict_plane per plane with batches, skip empty slices, fuse);
  * per-slice: the original's loop, one `model.predict` call per slice with batch 1, all 619 slices;
  * floor: FLOPs per slice x 619 slices / the CPU's measured float32 matrix-multiply rate (TensorFlow matmul).
Prints the three times, the speed-up and the ratio to the floor.

    .venv/bin/python bench/bench_inference.py [--config configs/atlas.toml] [--per-slice-subsample 0.25]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """Best-of float32 matrix-multiply rate (FLOP/s) with TensorFlow on this CPU."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    (a @ b).numpy()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        (a @ b).numpy()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/atlas.toml")
    parser.add_argument("--per-slice-subsample", type=float, default=0.25,
                        help="fraction of slices timed in the per-slice loop (the rest extrapolated)")
    args = parser.parse_args()

    import keras

    from raxnet.config import load_config, section
    from raxnet.postprocess import fuse_mean
    from raxnet.inference import predict_plane
    from raxnet.intensity import normalise
    from raxnet.models import DEFAULTS as MODEL_DEFAULTS
    from raxnet.models import build_model
    from raxnet.models.flops import count_flops
    from raxnet.planes import PLANES, padded_shape, slice_shape, to_slices, pad_slices
    from raxnet.templates import template_data

    cfg = load_config(args.config)
    mcfg = section(cfg, "model", MODEL_DEFAULTS)
    volume = template_data("t1", 1).astype(np.float32) * 1000.0
    shape = volume.shape
    models, flops = {}, {}
    for plane in PLANES:
        hw = padded_shape(slice_shape(shape, plane), mcfg["depth"])
        models[plane] = build_model(mcfg["name"], (*hw, 1), width=mcfg["width"], depth=mcfg["depth"],
                                    attention=mcfg["attention"], residual=mcfg["residual"],
                                    separable=mcfg["separable"], dropout=mcfg["dropout"])
        flops[plane] = count_flops(models[plane])
        predict_plane(models[plane], normalise(volume)[:, :, :8], plane, batch_size=32)  # warm-up / trace
    n_slices = sum(shape)
    total_flops = sum(flops[p] * shape[i] for i, p in ((2, "axial"), (0, "sagittal"), (1, "coronal")))

    t = time.perf_counter()
    norm = normalise(volume)
    probs = [predict_plane(models[p], norm, p, batch_size=32) for p in PLANES]
    fuse_mean(probs, 0.5)
    batched = time.perf_counter() - t

    rng = np.random.default_rng(0)
    per_slice_total = 0.0
    for plane in PLANES:
        stack = to_slices(norm, plane)
        hw = models[plane].input_shape[1:3]
        models[plane].predict(pad_slices(stack[:1], hw)[..., None], batch_size=1, verbose=0)
        n = stack.shape[0]
        idx = rng.choice(n, size=max(1, int(n * args.per_slice_subsample)), replace=False)
        t = time.perf_counter()
        for i in idx:
            models[plane].predict(pad_slices(stack[i : i + 1], hw)[..., None], batch_size=1, verbose=0)
        per_slice_total += (time.perf_counter() - t) * n / idx.size

    rate = matmul_rate()
    floor = total_flops / rate
    print(f"backend {keras.backend.backend()}, {os.cpu_count()} CPU cores, model {mcfg['name']} "
          f"width {mcfg['width']} depth {mcfg['depth']}")
    for plane in PLANES:
        print(f"  {plane:<9} input {models[plane].input_shape[1:3]}  {flops[plane] / 1e9:.2f} GFLOP/slice")
    print(f"matmul rate            {rate / 1e9:8.1f} GFLOP/s")
    print(f"FLOPs floor ({n_slices} slices) {floor:8.1f} s")
    print(f"batched (raxnet)       {batched:8.1f} s   ({batched / floor:.2f}x the floor)")
    print(f"per-slice predict loop {per_slice_total:8.1f} s   (extrapolated from {args.per_slice_subsample:.0%} of slices)")
    print(f"speed-up               {per_slice_total / batched:8.1f}x")


if __name__ == "__main__":
    main()
